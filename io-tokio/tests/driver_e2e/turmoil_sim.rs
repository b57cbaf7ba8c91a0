//! The driver under turmoil: two simulated hosts, virtual time. The server
//! is the real accept loop (`serve_machines` over turmoil's listener), the
//! client a driver over turmoil's `TcpStream`; the store's delay and the
//! server's idle timeout run on the simulated clock, so their effects show
//! up at exact virtual times.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::machine::CloseReason;
use io_tokio::driver::{Driver, NoEffects};
use io_tokio::listen::{serve_machines, MachineServe};
use tokio::sync::mpsc;

use crate::support::{recording_store, KvServer, LineClient};

const LATENCY: Duration = Duration::from_millis(10);

#[test]
fn store_delay_and_idle_timeout_on_virtual_time() {
    let mut sim = turmoil::Builder::new()
        .min_message_latency(LATENCY)
        .max_message_latency(LATENCY)
        .simulation_duration(Duration::from_secs(300))
        .build();
    let (store, writes) = recording_store(Duration::from_secs(5));
    sim.host("server", move || {
        let store = store.clone();
        async move {
            let listener = turmoil::net::TcpListener::bind("0.0.0.0:1143").await?;
            serve_machines(
                listener,
                |now, _peer| KvServer::new(now),
                store,
                MachineServe::default(),
                std::future::pending(),
            )
            .await;
            Ok(())
        }
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    sim.client("client", async move {
        let stream = turmoil::net::TcpStream::connect(("server", 1143)).await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (ev_tx, mut ev_rx) = mpsc::channel(8);
        let client = tokio::spawn(
            Driver::new(LineClient::default(), NoEffects)
                .commands(cmd_rx)
                .events(ev_tx)
                .run(stream),
        );
        assert_eq!(ev_rx.recv().await.as_deref(), Some("* OK toy"));
        let sent = tokio::time::Instant::now();
        cmd_tx.send("STORE k v".into()).await?;
        while let Some(e) = ev_rx.recv().await {
            seen2.lock().unwrap().push((e, sent.elapsed()));
        }
        let outcome = client.await?;
        assert_eq!(outcome.result?, CloseReason::PeerClosed);
        Ok(())
    });
    sim.run().unwrap();
    // The reply: one latency there, 5 s of store, one latency back. The
    // goodbye: 30 s after the server read the line (one latency after it
    // was sent), plus one latency back; the store's 5 s do not count.
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                "OK stored k".to_owned(),
                Duration::from_secs(5) + 2 * LATENCY
            ),
            ("BYE idle".to_owned(), Duration::from_secs(30) + 2 * LATENCY),
        ]
    );
    assert_eq!(writes.lock().unwrap().len(), 1);
}
