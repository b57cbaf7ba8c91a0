//! A peer that stops reading while the application keeps sending commands
//! (a MUPDATE subscriber that stalls while changes are pushed to it): the
//! driver's write buffer stays bounded, the commands wait in their bounded
//! channel, and a peer that takes no byte for the stall timeout is cut off —
//! while a slow but reading peer gets every byte and is never cut off.
//! Tokio's paused clock drives the timeouts, so nothing here depends on
//! real time.

use std::time::Duration;

use engine::machine::CloseReason;
use io_tokio::driver::{Driver, Error, NoEffects, Options};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::support::LineClient;

const PIPE: usize = 8 * 1024;

fn options(limit: usize) -> Options {
    Options {
        write_buffer_bytes_max: limit,
        write_stall_timeout: Duration::from_secs(10),
        ..Options::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_leaves_commands_in_the_channel_and_is_cut_off() {
    const LIMIT: usize = 256 * 1024;
    const LINE: usize = 64 * 1024;
    const SENT: usize = 200; // 12.8 MB if the driver took them all
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (tx, rx) = mpsc::channel(4);
    let driver = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .options(options(LIMIT))
            .commands(rx)
            .run(ours),
    );
    let line = "x".repeat(LINE);
    let mut accepted = 0;
    for _ in 0..SENT {
        // Blocks once the channel is full; fails once the driver is gone.
        match tx.send(line.clone()).await {
            Ok(()) => accepted += 1,
            Err(_) => break,
        }
    }
    let outcome = driver.await.unwrap();
    assert!(
        matches!(outcome.result, Err(Error::PeerNotReading(d)) if d == Duration::from_secs(10)),
        "{outcome:?}"
    );
    // The buffer filled up to the limit and no further than one command's
    // line past it.
    assert!(outcome.write_buffer_bytes_peak >= LIMIT, "{outcome:?}");
    assert!(
        outcome.write_buffer_bytes_peak < LIMIT + LINE + 2,
        "{outcome:?}"
    );
    assert!(outcome.bytes_written <= PIPE as u64, "{outcome:?}");
    // Taken by the driver: what fits in the buffer and the pipe, plus one;
    // then the channel's 4 slots, then the sender waited.
    let taken_max = (LIMIT + PIPE) / (LINE + 2) + 1;
    assert!(
        accepted <= taken_max + 4,
        "{accepted} commands accepted, at most {} expected",
        taken_max + 4
    );
    drop(theirs);
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_gets_every_byte_and_is_never_cut_off() {
    const LIMIT: usize = 64 * 1024;
    const LINE: usize = 16 * 1024;
    const LINES: usize = 40;
    let (ours, mut theirs) = tokio::io::duplex(PIPE);
    let (tx, rx) = mpsc::channel(4);
    let driver = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .options(options(LIMIT))
            .commands(rx)
            .run(ours),
    );
    // 4 KiB every 2 s: 160 reads, 320 s in all, far past the 10 s stall
    // timeout, but never 10 s without a byte taken.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0; 4096];
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let n = theirs.read(&mut buf).await.unwrap();
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
        }
    });
    let mut expected = Vec::new();
    for i in 0..LINES {
        let line = char::from(b'a' + (i % 26) as u8).to_string().repeat(LINE);
        expected.extend_from_slice(line.as_bytes());
        expected.extend_from_slice(b"\r\n");
        tx.send(line).await.unwrap();
    }
    tx.send("!close".into()).await.unwrap();
    let outcome = driver.await.unwrap();
    assert_eq!(
        outcome.result.as_ref().unwrap(),
        &CloseReason::Local("done".into()),
        "{outcome:?}"
    );
    assert!(
        outcome.write_buffer_bytes_peak < LIMIT + LINE + 2,
        "{outcome:?}"
    );
    assert_eq!(outcome.bytes_written, expected.len() as u64);
    let got = reader.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the slow reader got different bytes");
}
