//! SASL DIGEST-MD5 authentication and SASL encryption over real connections (Spark's
//! SparkSaslSuite and AuthIntegrationSuite's fallback cases): matching and non-matching secrets,
//! encryption that is really on, messages larger than the encrypted piece size,
//! `serverAlwaysEncrypt`, the AES<->SASL fallback both ways, and what a SASL server does with
//! traffic before authentication.

mod common;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rpcenv_transport::auth::sasl::{EXPECTED_SASL_MESSAGE, UNAUTHENTICATED_FETCH};
use rpcenv_transport::{
    AuthClientBootstrap, AuthConf, AuthServerBootstrap, BootstrapFuture, BoxedIo, ClientBootstrap,
    Message, NoOpRpcHandler, SaslClientBootstrap, SaslConf, SaslServerBootstrap, StreamChunkId,
    TransportClientFactory, TransportConf, TransportError, TransportServer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

fn sasl(secret: &str) -> SaslConf {
    SaslConf::new("app", secret)
}

async fn sasl_server(conf: SaslConf) -> (TransportServer, Arc<TestHandler>) {
    bootstrapped_server(Arc::new(SaslServerBootstrap::new(conf))).await
}

fn factory(boots: Vec<Arc<dyn ClientBootstrap>>) -> TransportClientFactory {
    TransportClientFactory::with_bootstraps(
        TransportConf::default(),
        Arc::new(NoOpRpcHandler),
        boots,
    )
}

fn sasl_factory(conf: SaslConf) -> TransportClientFactory {
    factory(vec![Arc::new(SaslClientBootstrap::new(conf))])
}

fn auth_failed(err: &TransportError) -> &str {
    match err {
        TransportError::AuthFailed { reason, .. } => reason,
        other => panic!("expected AuthFailed, got {other:?}"),
    }
}

/// Spark's testSaslAuthentication / testSaslEncryption, with every message kind, messages
/// across the 64 KiB piece size, and small pieces on one side.
#[tokio::test]
async fn matching_secrets_carry_every_message_kind_with_and_without_encryption() {
    init_tracing();
    for (encrypt, block) in [(false, 64 << 10), (true, 64 << 10), (true, 1000)] {
        let what = format!("encrypt={encrypt} block={block}");
        let (server, handler) = sasl_server(sasl("good").always_encrypt(encrypt)).await;
        let f = sasl_factory(sasl("good").encrypt(encrypt).max_encrypted_block(block));
        let c = within(f.create_client("127.0.0.1", server.port()))
            .await
            .unwrap();
        assert_eq!(
            within(c.send_rpc(Bytes::from("hello/Ping"))).await.unwrap(),
            Bytes::from("Hello, Ping!"),
            "{what}"
        );
        // 4 MiB once per mode; the small-piece run stops at 200 kB (3DES is slow in debug).
        let largest = if block < 64 << 10 { 200_000 } else { 4 << 20 };
        for n in [0usize, 1, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, largest] {
            let body = pattern(n);
            let got = within(c.send_rpc(body.clone())).await.unwrap();
            assert_eq!(got, body, "{what}: echo of {n} bytes");
        }
        let s = within(c.stream("largeBuffer")).await.unwrap();
        assert_eq!(within(s.collect(1 << 20)).await.unwrap(), pattern(100_000));
        assert_eq!(
            within(c.fetch_chunk(1, 1)).await.unwrap(),
            pattern(1024 - 25)
        );
        upload_then_one_way(&c, &handler, &what).await;
        // Both ends see the connection go when the client closes (Spark: both channels
        // inactive within 10 s).
        c.close();
        wait_until("the server sees the connection close", || {
            handler.inactive.lock().unwrap().len() == 1
        })
        .await;
        f.close();
    }
}

/// Spark's testNonMatching: the server refuses with the JDK's text; nothing reaches the handler.
#[tokio::test]
async fn non_matching_secrets_are_refused_with_mismatched_response() {
    init_tracing();
    let (server, handler) = sasl_server(sasl("server")).await;
    for encrypt in [false, true] {
        let err = within(
            sasl_factory(sasl("client").encrypt(encrypt)).create_client("127.0.0.1", server.port()),
        )
        .await
        .unwrap_err();
        let reason = auth_failed(&err);
        assert!(reason.contains("Mismatched response"), "{reason}");
    }
    // Another app id is refused too.
    let err = within(
        sasl_factory(SaslConf::new("other-app", "server"))
            .create_client("127.0.0.1", server.port()),
    )
    .await
    .unwrap_err();
    assert!(auth_failed(&err).contains("unknown app id"), "{err}");
    assert!(handler.active.lock().unwrap().is_empty());
}

/// Spark's testServerAlwaysEncrypt: a client that does not encrypt cannot connect.
#[tokio::test]
async fn server_always_encrypt_refuses_clients_that_do_not_encrypt() {
    let (server, handler) = sasl_server(sasl("s").always_encrypt(true)).await;
    let err = within(sasl_factory(sasl("s")).create_client("127.0.0.1", server.port()))
        .await
        .unwrap_err();
    assert!(
        auth_failed(&err).contains("No common protection layer"),
        "{err}"
    );
    assert!(handler.active.lock().unwrap().is_empty());
}

/// A stream that copies every byte written through it.
struct Tap {
    io: BoxedIo,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.lock().unwrap().extend_from_slice(&buf[..*n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct TapBootstrap(Arc<Mutex<Vec<u8>>>);

impl ClientBootstrap for TapBootstrap {
    fn bootstrap<'a>(&'a self, _peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        let written = self.0.clone();
        Box::pin(async move { Ok(Box::new(Tap { io, written }) as BoxedIo) })
    }
}

/// Spark's testDataEncryptionIsActuallyEnabled, seen from the wire: with auth-conf the socket
/// never carries the plaintext; with auth it does.
#[tokio::test]
async fn encryption_is_actually_enabled_on_the_wire() {
    let secret_text = "attack at dawn, the password is swordfish";
    for encrypt in [false, true] {
        let (server, _) = sasl_server(sasl("s")).await;
        let wire = Arc::new(Mutex::new(Vec::new()));
        let f = factory(vec![
            Arc::new(TapBootstrap(wire.clone())),
            Arc::new(SaslClientBootstrap::new(sasl("s").encrypt(encrypt))),
        ]);
        let c = within(f.create_client("127.0.0.1", server.port()))
            .await
            .unwrap();
        let got = within(c.send_rpc(Bytes::from(secret_text))).await.unwrap();
        assert_eq!(got, Bytes::from(secret_text));
        let wire = wire.lock().unwrap().clone();
        let seen = wire
            .windows(secret_text.len())
            .any(|w| w == secret_text.as_bytes());
        assert_eq!(
            seen, !encrypt,
            "plaintext on the wire with encrypt={encrypt}"
        );
        f.close();
    }
}

/// Spark's SaslRpcHandler answers a first request that is not a SaslMessage with an
/// IllegalStateException and keeps the connection open: a client can then authenticate on it.
#[tokio::test]
async fn a_request_that_is_not_a_sasl_message_gets_sparks_failure_and_the_connection_stays_open() {
    let (server, handler) = sasl_server(sasl("s")).await;
    let mut s = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let request = Message::RpcRequest {
        request_id: 7,
        body: Bytes::from("hello/x").into(),
    };
    s.write_all(&request.to_bytes()).await.unwrap();
    let reply = within(read_one(&mut s)).await;
    assert_eq!(
        reply,
        Message::RpcFailure {
            request_id: 7,
            error: EXPECTED_SASL_MESSAGE.into()
        }
    );
    // Still open: an empty SaslMessage gets the challenge.
    let mut body = vec![0xEA];
    body.extend_from_slice(&3i32.to_be_bytes());
    body.extend_from_slice(b"app");
    body.extend_from_slice(&0i32.to_be_bytes());
    let first = Message::RpcRequest {
        request_id: 8,
        body: Bytes::from(body).into(),
    };
    s.write_all(&first.to_bytes()).await.unwrap();
    match within(read_one(&mut s)).await {
        Message::RpcResponse {
            request_id: 8,
            body,
        } => {
            let challenge = String::from_utf8(body.into_bytes().to_vec()).unwrap();
            assert!(challenge.contains("algorithm=md5-sess"), "{challenge}");
            assert!(challenge.contains("qop=\"auth-conf,auth\""), "{challenge}");
        }
        other => panic!("{other:?}"),
    }
    assert!(handler.active.lock().unwrap().is_empty());
}

async fn read_one(s: &mut TcpStream) -> Message {
    let mut len = [0u8; 8];
    s.read_exact(&mut len).await.unwrap();
    let mut rest = vec![0u8; i64::from_be_bytes(len) as usize - 8];
    s.read_exact(&mut rest).await.unwrap();
    let mut frame = len.to_vec();
    frame.extend_from_slice(&rest);
    decode_all(&frame).pop().expect("one frame")
}

/// Spark 4.3.0 serves stream and chunk requests before SASL authentication; rpcenv answers
/// them with a failure and closes. Other frames close without a reply.
#[tokio::test]
async fn unauthenticated_stream_chunk_and_one_way_traffic_is_refused() {
    let (server, handler) = sasl_server(sasl("s")).await;
    let port = server.port();
    let replies = raw_exchange(
        port,
        Message::StreamRequest {
            stream_id: "largeBuffer".into(),
        },
    )
    .await;
    assert_eq!(
        replies,
        vec![Message::StreamFailure {
            stream_id: "largeBuffer".into(),
            error: UNAUTHENTICATED_FETCH.into()
        }]
    );
    let chunk = StreamChunkId {
        stream_id: 1,
        chunk_index: 0,
    };
    let replies = raw_exchange(port, Message::ChunkFetchRequest { chunk }).await;
    assert_eq!(
        replies,
        vec![Message::ChunkFetchFailure {
            chunk,
            error: UNAUTHENTICATED_FETCH.into()
        }]
    );
    let replies = raw_exchange(
        port,
        Message::OneWayMessage {
            body: Bytes::from("sneaky").into(),
        },
    )
    .await;
    assert_eq!(replies, vec![]);
    // An impossible frame length closes the connection too.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&i64::MAX.to_be_bytes()).await.unwrap();
    let mut sink = Vec::new();
    let _ = within(s.read_to_end(&mut sink)).await;
    assert!(sink.is_empty());
    assert!(handler.active.lock().unwrap().is_empty());
    assert!(handler.one_way.lock().unwrap().is_empty());
}

/// AuthIntegrationSuite's testSaslServerFallback / testSaslClientFallback, and the errors
/// without the fallback.
#[tokio::test]
async fn aes_and_sasl_fall_back_both_ways() {
    init_tracing();
    // An AES server with the fallback answers a SASL client (with and without encryption).
    let aes_server =
        AuthServerBootstrap::new(AuthConf::new("app", "s")).with_sasl_fallback(sasl("s"));
    let (server, _) = bootstrapped_server(Arc::new(aes_server)).await;
    for encrypt in [false, true] {
        let f = sasl_factory(sasl("s").encrypt(encrypt));
        let c = within(f.create_client("127.0.0.1", server.port()))
            .await
            .unwrap();
        let big = pattern(200_000);
        assert_eq!(within(c.send_rpc(big.clone())).await.unwrap(), big);
        f.close();
    }
    // ... and still AES clients with AES.
    let f = factory(vec![Arc::new(AuthClientBootstrap::new(AuthConf::new(
        "app", "s",
    )))]);
    let c = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert_eq!(
        within(c.send_rpc(Bytes::from("hello/aes"))).await.unwrap(),
        Bytes::from("Hello, aes!")
    );
    f.close();

    // An AES client with the fallback retries with SASL against a SASL-only server.
    let (sasl_only, _) = sasl_server(sasl("s")).await;
    let aes_client =
        AuthClientBootstrap::new(AuthConf::new("app", "s")).with_sasl_fallback(sasl("s"));
    let f = factory(vec![Arc::new(aes_client)]);
    let c = within(f.create_client("127.0.0.1", sasl_only.port()))
        .await
        .unwrap();
    assert_eq!(
        within(c.send_rpc(Bytes::from("hello/fallback")))
            .await
            .unwrap(),
        Bytes::from("Hello, fallback!")
    );
    f.close();

    // Without it, the AES client's error names the setting that selects SASL.
    let f = factory(vec![Arc::new(AuthClientBootstrap::new(AuthConf::new(
        "app", "s",
    )))]);
    let err = within(f.create_client("127.0.0.1", sasl_only.port()))
        .await
        .unwrap_err();
    assert!(
        auth_failed(&err).contains("network.crypto.enabled=false"),
        "{err}"
    );
    // A failed fallback reports both attempts.
    let aes_client =
        AuthClientBootstrap::new(AuthConf::new("app", "x")).with_sasl_fallback(sasl("x"));
    let err =
        within(factory(vec![Arc::new(aes_client)]).create_client("127.0.0.1", sasl_only.port()))
            .await
            .unwrap_err();
    let reason = auth_failed(&err);
    assert!(
        reason.contains("Expected SaslMessage") && reason.contains("Mismatched response"),
        "{reason}"
    );

    // A SASL client facing an AES server without the fallback is told which setting to change.
    let (aes_only, _) = bootstrapped_server(Arc::new(AuthServerBootstrap::new(AuthConf::new(
        "app", "s",
    ))))
    .await;
    let err = within(sasl_factory(sasl("s")).create_client("127.0.0.1", aes_only.port()))
        .await
        .unwrap_err();
    assert!(
        auth_failed(&err).contains("network.crypto.enabled=true"),
        "{err}"
    );
}

/// A server that accepts and never answers: the SASL client gives up after its rpcTimeout and
/// does not fall back from a timeout. A client that never speaks is dropped by the server.
#[tokio::test]
async fn silent_peers_time_out_the_handshake() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
    });
    let quick = sasl("s").rpc_timeout(Duration::from_millis(300));
    let err = within(sasl_factory(quick.clone()).create_client("127.0.0.1", port))
        .await
        .unwrap_err();
    assert!(auth_failed(&err).contains("rpcTimeout"), "{err}");
    let aes = AuthConf::new("app", "s").rpc_timeout(Duration::from_millis(300));
    let f = factory(vec![Arc::new(
        AuthClientBootstrap::new(aes).with_sasl_fallback(quick.clone()),
    )]);
    let err = within(f.create_client("127.0.0.1", port))
        .await
        .unwrap_err();
    let reason = auth_failed(&err);
    assert!(
        reason.contains("rpcTimeout") && !reason.contains("SASL"),
        "no fallback after a timeout: {reason}"
    );
    hold.abort();

    let (server, handler) = sasl_server(quick).await;
    let mut s = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let mut sink = Vec::new();
    let n = within(s.read_to_end(&mut sink)).await;
    assert!(n.is_err() || sink.is_empty(), "closed without a reply");
    assert!(handler.active.lock().unwrap().is_empty());
}
