//! `/metrics` over real HTTP: a scraper gets the text format with what the
//! daemons recorded; other paths, methods and oversized heads get the right
//! status; `corvid_metrics_listen` in imapd.conf starts the listener.

use std::sync::Arc;
use std::time::Duration;

use io_tokio::config::{Config, LoadOptions};
use io_tokio::metrics::{self, Metrics, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn start(m: Arc<Metrics>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(metrics::serve(l, m, std::future::pending()));
    addr
}

#[tokio::test]
async fn a_scrape_returns_every_family_recorded() {
    let m = Arc::new(Metrics::new(Options::default()));
    let guard = m.connection_opened("sync_server");
    drop(m.connection_opened("sync_server")); // closed at once
    m.command("sync_server", "APPLY MESSAGE", "ok");
    m.command("sync_server", "APPLY MESSAGE", "ok");
    m.command("sync_server", "GET USER", "IMAP_MAILBOX_NONEXISTENT");
    m.replicated("", 25, 51_200);
    m.replication_lag("replica", Duration::from_millis(400));
    m.set_sync_log_backlog_bytes("replica", 7);
    m.set_mupdate_mailboxes(2000);
    m.mupdate_slave_lag(Duration::from_millis(3));
    m.set_backup_bytes("b1", 1 << 20);
    m.dsync_exit(0);
    m.dsync_exit(2);
    let addr = start(m.clone()).await;
    let r = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
    for line in [
        "# TYPE corvid_connections_total counter",
        "corvid_connections_total{service=\"sync_server\"} 2",
        "corvid_connections_active{service=\"sync_server\"} 1",
        "corvid_commands_total{service=\"sync_server\",command=\"APPLY MESSAGE\",result=\"ok\"} 2",
        "corvid_commands_total{service=\"sync_server\",command=\"GET USER\",result=\"IMAP_MAILBOX_NONEXISTENT\"} 1",
        "corvid_replicated_messages_total{channel=\"\"} 25",
        "corvid_replicated_bytes_total{channel=\"\"} 51200",
        "# TYPE corvid_replication_lag_seconds histogram",
        "corvid_replication_lag_seconds_bucket{channel=\"replica\",le=\"0.25\"} 0",
        "corvid_replication_lag_seconds_bucket{channel=\"replica\",le=\"0.5\"} 1",
        "corvid_sync_log_backlog_bytes{channel=\"replica\"} 7",
        "corvid_mupdate_mailboxes 2000",
        "corvid_mupdate_slave_lag_seconds_bucket{le=\"0.005\"} 1",
        "corvid_backup_bytes{partition=\"b1\"} 1048576",
        "corvid_dsync_exits_total{code=\"2\"} 1",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
    // Every sample line is `name{labels} value` with a numeric value.
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let v = l.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }
    drop(guard);
    let r = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert!(r.contains("corvid_connections_active{service=\"sync_server\"} 0\n"));
}

#[tokio::test]
async fn other_paths_methods_and_garbage_get_their_status() {
    let addr = start(Arc::new(Metrics::new(Options::default()))).await;
    let r = get(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    let r = get(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    let r = get(addr, b"hello\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    let r = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 200 ") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_not_buffered() {
    let addr = start(Arc::new(Metrics::new(Options {
        request_bytes_max: 1024,
        ..Options::default()
    })))
    .await;
    let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
    req.extend(std::iter::repeat_n(b'a', 4096));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before taking all of it.
    let _ = s.write_all(&req).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test]
async fn corvid_metrics_listen_starts_the_global_registry_listener() {
    let conf = Config::parse_str(
        "configdirectory: /c\ncorvid_metrics_listen: 127.0.0.1:0\n",
        "imapd.conf",
        &LoadOptions::default(),
    )
    .unwrap();
    let addr = metrics::spawn_from_config(&conf).await.unwrap().unwrap();
    metrics::global().command("mupdate", "FIND", "ok");
    let r = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        r.contains("corvid_commands_total{service=\"mupdate\",command=\"FIND\",result=\"ok\"} 1"),
        "{r}"
    );

    let unset =
        Config::parse_str("configdirectory: /c\n", "i.conf", &LoadOptions::default()).unwrap();
    assert_eq!(metrics::spawn_from_config(&unset).await.unwrap(), None);
    let bad = Config::parse_str(
        "configdirectory: /c\ncorvid_metrics_listen: nowhere\n",
        "i.conf",
        &LoadOptions::default(),
    )
    .unwrap();
    let e = metrics::spawn_from_config(&bad).await.unwrap_err();
    assert!(e.starts_with("i.conf:2: corvid_metrics_listen:"), "{e}");
}
