//! The driver over an in-memory `tokio::io::duplex` pipe whose tiny buffer
//! forces partial reads and partial writes everywhere, including inside the
//! deflate stream after COMPRESS. The conversation must come out the same
//! for every buffer size.

use std::time::Duration;

use engine::machine::{CloseReason, Time};
use io_tokio::driver::{Driver, NoEffects, Options};
use tokio::sync::mpsc;

use crate::support::{next_event, recording_store, KvServer, LineClient};

async fn conversation(pipe_bytes: usize, read_chunk_bytes: usize) -> Vec<String> {
    let (c, s) = tokio::io::duplex(pipe_bytes);
    let (store, _writes) = recording_store(Duration::from_millis(1));
    let options = Options {
        read_chunk_bytes,
        ..Options::default()
    };
    let server = tokio::spawn(
        Driver::new(KvServer::new(Time::ZERO), store)
            .options(options.clone())
            .run(s),
    );
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .options(options)
            .commands(cmd_rx)
            .events(ev_tx)
            .run(c),
    );
    let mut seen = vec![next_event(&mut ev_rx).await.unwrap()];
    cmd_tx.send("ECHO before".into()).await.unwrap();
    seen.push(next_event(&mut ev_rx).await.unwrap());
    cmd_tx.send("COMPRESS".into()).await.unwrap();
    seen.push(next_event(&mut ev_rx).await.unwrap());
    seen.push(next_event(&mut ev_rx).await.unwrap());
    // Pipelined after the switch: store, echo of a long line, nonsense, quit.
    let long = "0123456789".repeat(300);
    for line in [
        "STORE k v".to_owned(),
        format!("ECHO {long}"),
        "NOPE".to_owned(),
        "QUIT".to_owned(),
    ] {
        cmd_tx.send(line).await.unwrap();
    }
    while let Some(e) = next_event(&mut ev_rx).await {
        seen.push(if e.len() > 40 {
            format!("{} bytes", e.len())
        } else {
            e
        });
    }
    assert_eq!(
        server.await.unwrap().result.unwrap(),
        CloseReason::Done,
        "pipe {pipe_bytes}, reads {read_chunk_bytes}"
    );
    assert_eq!(
        client.await.unwrap().result.unwrap(),
        CloseReason::PeerClosed
    );
    seen
}

#[tokio::test]
async fn any_buffer_size_gives_the_same_conversation() {
    let expected = [
        "* OK toy",
        "before",
        "OK DEFLATE active",
        "* OK compressed",
        "OK stored k",
        "3000 bytes",
        "BAD",
        "BYE",
    ];
    for (pipe, read) in [
        (1, 1),
        (3, 2),
        (7, 5),
        (64, 3),
        (4096, 16 * 1024),
        (1, 16 * 1024),
    ] {
        assert_eq!(
            conversation(pipe, read).await,
            expected,
            "pipe {pipe}, reads {read}"
        );
    }
}
