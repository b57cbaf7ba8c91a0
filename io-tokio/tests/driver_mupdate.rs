//! The driver's command backpressure composed with the MUPDATE feed: a real
//! `engine::mupdate::Server` over the driver, an UPDATE subscriber that stops
//! reading, and a feeder that pushes changes the way the `corvid mupdate`
//! daemon's channel subscriber does (`try_send`, the channel's last slot
//! kept for `Command::Lagged`). The driver's buffer stays bounded, the feed
//! finds the channel full and drops the subscriber; a subscriber that never
//! reads again is cut off by the stall timeout, one that resumes reading is
//! told `* BYE "update stream overflow"`. Tokio's paused clock drives the
//! timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use engine::machine::{CloseReason, Time};
use engine::mupdate::{
    AuthOk, Change, Command, Completion, Effect, Entry, Options as MupdateOptions, Read, Record,
    Server, State,
};
use io_tokio::driver::{Driver, Error, FnExecutor, Options, Outcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PIPE: usize = 8 * 1024;
const LIMIT: usize = 64 * 1024;
const QUEUE: usize = 64;
const LOCATION: usize = 1024;

/// An empty mailbox list (the subscriber only hears pushed changes).
struct Empty;

impl Read for Empty {
    fn find(&self, _name: &[u8]) -> Option<Record> {
        None
    }
    fn list(&self, _prefix: Option<&[u8]>) -> Vec<Entry> {
        Vec::new()
    }
}

type Session = JoinHandle<Outcome<Server<Empty>>>;

/// Logs in as an admin, subscribes, and returns once `U1 OK` is read; then
/// the peer stops reading while changes are pushed until the feed drops it.
/// Returns the session, the peer's end and how many changes were queued.
async fn subscriber_falls_behind() -> (Session, DuplexStream, usize) {
    let (ours, mut theirs) = tokio::io::duplex(PIPE);
    let exec = FnExecutor(|effect: Effect| async move {
        match effect {
            Effect::Authenticate(_) => Completion::Auth(Some(AuthOk {
                userid: "admin".into(),
                admin: true,
            })),
            Effect::Subscribe { .. } => Completion::Subscribed(Vec::new()),
            other => panic!("unexpected effect {other:?}"),
        }
    });
    let (tx, rx) = mpsc::channel(QUEUE);
    let session = tokio::spawn(
        Driver::new(
            Server::new(Time::ZERO, Empty, MupdateOptions::default()),
            exec,
        )
        .options(Options {
            write_buffer_bytes_max: LIMIT,
            write_stall_timeout: Duration::from_secs(10),
            ..Options::default()
        })
        .commands(rx)
        .run(ours),
    );
    theirs
        .write_all(b"A1 AUTHENTICATE \"PLAIN\" \"AGFkbWluAHB3\"\r\nU1 UPDATE\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    while !String::from_utf8_lossy(&seen).contains("U1 OK") {
        let n = theirs.read(&mut buf).await.unwrap();
        assert!(n > 0, "session ended before UPDATE: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }

    // The daemon's ChannelSubscriber::push, one change at a time, giving the
    // session a turn between pushes.
    let location = Bytes::from(format!("backend!{}", "p".repeat(LOCATION)));
    let mut queued = 0;
    loop {
        assert!(queued < 100_000, "the feed never found the channel full");
        if tx.capacity() <= 1 {
            tx.try_send(Command::Lagged).unwrap();
            break;
        }
        let change = Change {
            name: Bytes::from(format!("user.u{queued}")),
            before: None,
            after: Some(Record {
                state: State::Active {
                    acl: Bytes::from_static(b"admin\tlrswipkxtecda\t"),
                },
                location: location.clone(),
            }),
        };
        tx.try_send(Command::Change(Arc::new(change))).unwrap();
        queued += 1;
        tokio::task::yield_now().await;
    }
    (session, theirs, queued)
}

/// What the session may have buffered: the limit plus one change's push.
fn assert_bounded<M>(outcome: &Outcome<M>) {
    assert!(
        outcome.write_buffer_bytes_peak >= LIMIT,
        "the buffer never filled: {outcome:?}"
    );
    assert!(
        outcome.write_buffer_bytes_peak < LIMIT + LOCATION + 200,
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_never_reads_again_is_dropped_and_cut_off() {
    let (session, theirs, queued) = subscriber_falls_behind().await;
    // It fell behind after the buffer, the pipe and the channel filled.
    let taken_max = (LIMIT + PIPE) / LOCATION + 1;
    assert!(queued <= taken_max + QUEUE, "{queued} changes queued");
    let outcome = session.await.unwrap();
    assert!(
        matches!(outcome.result, Err(Error::PeerNotReading(_))),
        "{outcome:?}"
    );
    assert_bounded(&outcome);
    drop(theirs);
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_resumes_reading_is_told_it_overflowed() {
    let (session, mut theirs, queued) = subscriber_falls_behind().await;
    let mut rest = Vec::new();
    theirs.read_to_end(&mut rest).await.unwrap();
    let outcome = session.await.unwrap();
    assert_eq!(
        outcome.result.as_ref().unwrap(),
        &CloseReason::LimitExceeded("subscriber lagged".into()),
        "{outcome:?}"
    );
    assert_bounded(&outcome);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.ends_with("* BYE \"update stream overflow\"\r\n"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    // Every change queued before the drop was delivered, in order.
    let last = format!("user.u{}", queued - 1);
    assert!(text.contains(&last), "{last} missing");
}
