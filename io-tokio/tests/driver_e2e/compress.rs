//! COMPRESS DEFLATE switching mid-stream, at exactly the machine's byte.

use engine::machine::{CloseReason, Time};
use io_tokio::driver::{Driver, Error, NoEffects};
use proto::compress::{Deflater, Inflater};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::{next_event, KvServer, LineClient, NoStore};
use crate::tcp::tcp_pair;

/// A hand-written client checks the wire itself: plaintext up to and
/// including `OK DEFLATE active\r\n`, raw deflate from the next byte on. It
/// also sends its first compressed command in the same write as `COMPRESS`,
/// so the server reads both in one read and must hand the tail back to the
/// driver's inflater.
#[tokio::test]
async fn the_wire_switches_to_deflate_at_the_exact_byte() {
    let (mut c, s) = tcp_pair().await;
    let server = tokio::spawn(Driver::new(KvServer::new(Time::ZERO), NoStore).run(s));

    let mut deflater = Deflater::new();
    deflater.write(b"ECHO piped\r\n").unwrap();
    let mut first = b"COMPRESS\r\n".to_vec();
    first.extend_from_slice(&deflater.flush().unwrap());
    c.write_all(&first).await.unwrap();

    // Read until the plaintext part is complete; whatever follows in the
    // same reads is compressed.
    let plain = b"* OK toy\r\nOK DEFLATE active\r\n";
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < plain.len() {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "EOF before the plaintext part");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&got[..plain.len()], plain);
    let mut inflater = Inflater::default();
    inflater.feed(&got[plain.len()..]).unwrap();

    let expect = b"* OK compressed\r\npiped\r\n";
    let mut text = Vec::new();
    loop {
        while let Some(chunk) = inflater.pull().unwrap() {
            text.extend_from_slice(&chunk);
        }
        if text.len() >= expect.len() {
            break;
        }
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "EOF before the compressed replies");
        inflater.feed(&buf[..n]).unwrap();
    }
    assert_eq!(text, expect);

    deflater.write(b"QUIT\r\n").unwrap();
    c.write_all(&deflater.flush().unwrap()).await.unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.unwrap();
    inflater.feed(&rest).unwrap();
    let mut tail = Vec::new();
    while let Some(chunk) = inflater.pull().unwrap() {
        tail.extend_from_slice(&chunk);
    }
    assert_eq!(tail, b"BYE\r\n");
    assert_eq!(server.await.unwrap().result.unwrap(), CloseReason::Done);
}

/// Two drivers, both switching: the conversation goes on, and the bytes on
/// the wire are far fewer than the text.
#[tokio::test]
async fn two_drivers_compress_and_talk() {
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(Driver::new(KvServer::new(Time::ZERO), NoStore).run(s));
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(8);
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .commands(cmd_rx)
            .events(ev_tx)
            .run(c),
    );
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("* OK toy"));
    cmd_tx.send("COMPRESS".into()).await.unwrap();
    assert_eq!(
        next_event(&mut ev_rx).await.as_deref(),
        Some("OK DEFLATE active")
    );
    assert_eq!(
        next_event(&mut ev_rx).await.as_deref(),
        Some("* OK compressed")
    );
    let line = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let mut plain_sent = b"COMPRESS\r\n".len();
    for i in 0..100 {
        let cmd = format!("ECHO {i} {line}");
        plain_sent += cmd.len() + 2;
        cmd_tx.send(cmd).await.unwrap();
        assert_eq!(next_event(&mut ev_rx).await.unwrap(), format!("{i} {line}"));
    }
    cmd_tx.send("QUIT".into()).await.unwrap();
    plain_sent += 6;
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("BYE"));
    assert_eq!(next_event(&mut ev_rx).await, None);
    let client = client.await.unwrap();
    let server = server.await.unwrap();
    assert_eq!(server.result.unwrap(), CloseReason::Done);
    assert_eq!(client.result.unwrap(), CloseReason::PeerClosed);
    assert_eq!(client.bytes_written, server.bytes_read);
    assert!(
        client.bytes_written * 5 < plain_sent as u64,
        "deflate was not applied: {} wire bytes for {plain_sent} plaintext bytes",
        client.bytes_written
    );
}

/// A peer whose "compressed" bytes are not deflate: the connection ends
/// with the compression layer's error (the peer's fault), not a panic.
#[tokio::test]
async fn corrupt_deflate_from_the_peer_ends_the_connection() {
    let (mut c, s) = tcp_pair().await;
    let server = tokio::spawn(Driver::new(KvServer::new(Time::ZERO), NoStore).run(s));
    c.write_all(b"COMPRESS\r\n").await.unwrap();
    // 0xff: block type 3, which RFC 1951 reserves.
    c.write_all(&[0xff; 32]).await.unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest).await;
    let outcome = server.await.unwrap();
    assert!(
        matches!(outcome.result, Err(Error::Compress(_))),
        "{:?}",
        outcome.result
    );
}
