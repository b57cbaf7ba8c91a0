//! TLS through the driver: STARTTLS mid-stream, implicit TLS, TLS then
//! COMPRESS, and a handshake that must fail. Certificates are generated per
//! test with rcgen and loaded from PEM files the way imapd.conf names them.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use engine::machine::{CloseReason, Layer, Time};
use io_tokio::driver::{Driver, Error, NoEffects};
use io_tokio::tls::{TlsConfigs, TlsFiles};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::support::{next_event, KvServer, LineClient, NoStore};
use crate::tcp::tcp_pair;

/// A CA, and a server certificate for `localhost` signed by it, written as
/// PEM files into `dir`: ca.pem, server.pem, server.key.
fn make_certs(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "corvid test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// Server and client configurations from imapd.conf-style keys.
fn configs(dir: &Path) -> TlsConfigs {
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let conf = [
        ("tls_server_cert", path("server.pem")),
        ("tls_server_key", path("server.key")),
        ("tls_server_ca_file", path("ca.pem")),
    ];
    let files = TlsFiles::from_lookup(|k| {
        conf.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    let configs = TlsConfigs::from_files(&files).unwrap();
    assert!(configs.server.is_some() && configs.client.is_some());
    configs
}

/// A transport that records every byte read and written, to look at the
/// wire.
struct Tap<S> {
    inner: S,
    wire: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.wire.lock().unwrap().extend_from_slice(&new);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.wire.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn starttls_mid_stream_then_compress() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let tls = configs(dir.path());
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(
        Driver::new(KvServer::new(Time::ZERO), NoStore)
            .tls(tls.clone())
            .run(s),
    );
    let wire = Arc::new(Mutex::new(Vec::new()));
    let tapped = Tap {
        inner: c,
        wire: wire.clone(),
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(8);
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .tls(tls)
            .commands(cmd_rx)
            .events(ev_tx)
            .run(tapped),
    );
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("* OK toy"));
    cmd_tx.send("STARTTLS".into()).await.unwrap();
    assert_eq!(
        next_event(&mut ev_rx).await.as_deref(),
        Some("OK Begin TLS negotiation now")
    );
    // The server's re-banner comes under TLS, after the handshake.
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("* OK tls"));
    cmd_tx.send("ECHO secret-one".into()).await.unwrap();
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("secret-one"));
    cmd_tx.send("COMPRESS".into()).await.unwrap();
    assert_eq!(
        next_event(&mut ev_rx).await.as_deref(),
        Some("OK DEFLATE active")
    );
    assert_eq!(
        next_event(&mut ev_rx).await.as_deref(),
        Some("* OK compressed")
    );
    cmd_tx.send("ECHO secret-two".into()).await.unwrap();
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("secret-two"));
    cmd_tx.send("QUIT".into()).await.unwrap();
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("BYE"));
    assert_eq!(next_event(&mut ev_rx).await, None);
    assert_eq!(
        client.await.unwrap().result.unwrap(),
        CloseReason::PeerClosed
    );
    assert_eq!(server.await.unwrap().result.unwrap(), CloseReason::Done);

    let wire = wire.lock().unwrap();
    assert!(
        contains(&wire, b"STARTTLS\r\n"),
        "the plaintext part is on the wire"
    );
    assert!(contains(&wire, b"OK Begin TLS negotiation now\r\n"));
    for secret in [&b"secret"[..], b"* OK tls", b"COMPRESS", b"BYE"] {
        assert!(
            !contains(&wire, secret),
            "{:?} crossed the wire in clear",
            String::from_utf8_lossy(secret)
        );
    }
}

#[tokio::test]
async fn implicit_tls_from_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let tls = configs(dir.path());
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(
        Driver::new(KvServer::new(Time::ZERO), NoStore)
            .tls(tls.clone())
            .start_layer(Layer::TlsServer)
            .run(s),
    );
    let wire = Arc::new(Mutex::new(Vec::new()));
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(8);
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .tls(tls)
            .start_layer(Layer::TlsClient {
                server_name: "localhost".into(),
            })
            .commands(cmd_rx)
            .events(ev_tx)
            .run(Tap {
                inner: c,
                wire: wire.clone(),
            }),
    );
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("* OK toy"));
    cmd_tx.send("QUIT".into()).await.unwrap();
    assert_eq!(next_event(&mut ev_rx).await.as_deref(), Some("BYE"));
    assert_eq!(next_event(&mut ev_rx).await, None);
    assert_eq!(
        client.await.unwrap().result.unwrap(),
        CloseReason::PeerClosed
    );
    assert_eq!(server.await.unwrap().result.unwrap(), CloseReason::Done);
    let wire = wire.lock().unwrap();
    assert!(!contains(&wire, b"* OK toy") && !contains(&wire, b"QUIT"));
    // A TLS handshake record opens the conversation.
    assert_eq!(wire[0], 0x16, "first byte is a TLS handshake record");
}

#[tokio::test]
async fn an_untrusted_server_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let server_tls = configs(dir.path());
    // The client trusts another CA.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path());
    let client_tls = configs(other.path());
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(
        Driver::new(KvServer::new(Time::ZERO), NoStore)
            .tls(server_tls)
            .start_layer(Layer::TlsServer)
            .run(s),
    );
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .tls(client_tls)
            .start_layer(Layer::TlsClient {
                server_name: "localhost".into(),
            })
            .run(c),
    );
    let client = client.await.unwrap();
    assert!(
        matches!(&client.result, Err(Error::TlsHandshake(e)) if e.to_string().contains("invalid peer certificate")),
        "{:?}",
        client.result
    );
    let server = server.await.unwrap();
    assert!(
        matches!(server.result, Err(Error::TlsHandshake(_))),
        "{:?}",
        server.result
    );
}

#[tokio::test]
async fn tls_without_a_configuration_is_refused() {
    let (c, s) = tcp_pair().await;
    let server = tokio::spawn(Driver::new(KvServer::new(Time::ZERO), NoStore).run(s));
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let client = tokio::spawn(
        Driver::new(LineClient::default(), NoEffects)
            .commands(cmd_rx)
            .run(c),
    );
    cmd_tx.send("STARTTLS".into()).await.unwrap();
    let server = server.await.unwrap();
    assert!(
        matches!(server.result, Err(Error::TlsNotConfigured("server"))),
        "{:?}",
        server.result
    );
    drop(cmd_tx);
    let _ = client.await.unwrap();
}
