//! Spark's AES authentication and session ciphers over real connections: every cipher and
//! version end to end, rejection of wrong secrets, app ids and unauthenticated traffic (before
//! authentication nothing reaches the handler), handshake timeouts, and the clear error of a
//! cipher or version mismatch.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rpcenv_transport::auth::{AUTHENTICATION_FAILED, UNKNOWN_CHALLENGE};
use rpcenv_transport::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion, ClientBootstrap,
    Message, NoOpRpcHandler, StreamChunkId, TransportClientFactory, TransportConf, TransportError,
    TransportServer,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const ALL: [(AuthCipher, AuthVersion); 4] = [
    (AuthCipher::Ctr, AuthVersion::V1),
    (AuthCipher::Ctr, AuthVersion::V2),
    (AuthCipher::Gcm, AuthVersion::V1),
    (AuthCipher::Gcm, AuthVersion::V2),
];

fn conf(secret: &str, cipher: AuthCipher, version: AuthVersion) -> AuthConf {
    AuthConf::new("app", secret).cipher(cipher).version(version)
}

async fn server(auth: AuthConf) -> (TransportServer, Arc<TestHandler>) {
    bootstrapped_server(Arc::new(AuthServerBootstrap::new(auth))).await
}

fn factory(auth: Option<AuthConf>) -> TransportClientFactory {
    let boots: Vec<Arc<dyn ClientBootstrap>> = auth
        .map(|a| Arc::new(AuthClientBootstrap::new(a)) as Arc<dyn ClientBootstrap>)
        .into_iter()
        .collect();
    TransportClientFactory::with_bootstraps(
        TransportConf::default(),
        Arc::new(NoOpRpcHandler),
        boots,
    )
}

#[tokio::test]
async fn every_cipher_and_version_carries_all_message_kinds() {
    init_tracing();
    for (cipher, version) in ALL {
        let what = format!("{cipher:?} v{}", version.number());
        let (server, handler) = server(conf("good", cipher, version)).await;
        let f = factory(Some(conf("good", cipher, version)));
        let c = within(f.create_client("127.0.0.1", server.port()))
            .await
            .unwrap();
        for n in [0usize, 1, 64 << 10, 4 << 20] {
            let body = pattern(n);
            let got = within(c.send_rpc(body.clone())).await.unwrap();
            assert_eq!(got, body, "{what}: echo of {n} bytes");
        }
        let futs: Vec<_> = (0..500)
            .map(|i| c.send_rpc(Bytes::from(format!("hello/{i}"))))
            .collect();
        for (i, f) in futs.into_iter().enumerate() {
            assert_eq!(
                within(f).await.unwrap(),
                Bytes::from(format!("Hello, {i}!")),
                "{what}"
            );
        }
        let s = within(c.stream("largeBuffer")).await.unwrap();
        assert_eq!(
            within(s.collect(64 << 20)).await.unwrap(),
            pattern(100_000),
            "{what}"
        );
        assert_eq!(
            within(c.fetch_chunk(1, 0)).await.unwrap(),
            pattern(100_000),
            "{what}"
        );
        upload_then_one_way(&c, &handler, &what).await;
        match within(c.send_rpc(Bytes::from("return error/x"))).await {
            Err(TransportError::RpcFailure { message, .. }) => assert_eq!(message, "Returned: x"),
            other => panic!("{what}: {other:?}"),
        }
        f.close();
    }
}

#[tokio::test]
async fn wrong_secret_and_wrong_app_id_fail_and_reach_no_handler() {
    init_tracing();
    let (server, handler) = server(conf("good", AuthCipher::Ctr, AuthVersion::V1)).await;
    for client in [
        conf("bad", AuthCipher::Ctr, AuthVersion::V1),
        AuthConf::new("other-app", "good"),
    ] {
        let err = within(factory(Some(client)).create_client("127.0.0.1", server.port()))
            .await
            .unwrap_err();
        match &err {
            TransportError::AuthFailed { peer, reason } => {
                assert_eq!(peer.port(), server.port());
                assert!(reason.contains(AUTHENTICATION_FAILED), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&server.port().to_string()));
    }
    assert!(handler.active.lock().unwrap().is_empty());
}

#[tokio::test]
async fn client_refuses_a_server_with_another_secret() {
    // The client also checks the server: its answer must decrypt with the client's secret.
    let (server, _) = server(conf("good", AuthCipher::Gcm, AuthVersion::V2)).await;
    let f = factory(Some(conf("good", AuthCipher::Gcm, AuthVersion::V2)));
    within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    // A server without authentication echoes the challenge: not a valid answer.
    let plain = TransportServer::bind(
        TransportConf::default(),
        "127.0.0.1",
        0,
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap();
    let err = within(
        factory(Some(conf("good", AuthCipher::Gcm, AuthVersion::V2)))
            .create_client("127.0.0.1", plain.port()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, TransportError::AuthFailed { reason, .. } if reason.contains("did not decrypt")),
        "{err}"
    );
}

#[tokio::test]
async fn unauthenticated_requests_are_refused_and_closed() {
    init_tracing();
    let (server, handler) = server(conf("good", AuthCipher::Ctr, AuthVersion::V1)).await;
    let port = server.port();

    // A first RpcRequest that is not a challenge: "Unknown challenge message.", then closed.
    let replies = raw_exchange(
        port,
        Message::RpcRequest {
            request_id: 42,
            body: Bytes::from("hello/there").into(),
        },
    )
    .await;
    assert_eq!(
        replies,
        vec![Message::RpcFailure {
            request_id: 42,
            error: UNKNOWN_CHALLENGE.into()
        }]
    );
    // ... also when it is too large to be one (the body is not even read).
    let replies = raw_exchange(
        port,
        Message::RpcRequest {
            request_id: 43,
            body: pattern(1 << 20).into(),
        },
    )
    .await;
    assert_eq!(
        replies,
        vec![Message::RpcFailure {
            request_id: 43,
            error: UNKNOWN_CHALLENGE.into()
        }]
    );

    // Every other kind of frame: closed without a reply.
    for msg in [
        Message::StreamRequest {
            stream_id: "largeBuffer".into(),
        },
        Message::ChunkFetchRequest {
            chunk: StreamChunkId {
                stream_id: 1,
                chunk_index: 0,
            },
        },
        Message::OneWayMessage {
            body: Bytes::from("sneaky").into(),
        },
        Message::UploadStream {
            request_id: 7,
            meta: Bytes::from("meta/file"),
            body_byte_count: 4,
            body: Bytes::from("data"),
        },
        Message::MergedBlockMetaRequest {
            request_id: 8,
            app_id: "app".into(),
            shuffle_id: 1,
            shuffle_merge_id: 2,
            reduce_id: 3,
        },
    ] {
        let kind = msg.type_name();
        assert_eq!(raw_exchange(port, msg).await, vec![], "{kind}");
    }

    // A client without authentication sees the refusal as an RPC failure.
    let f = factory(None);
    let c = within(f.create_client("127.0.0.1", port)).await.unwrap();
    match within(c.send_rpc(Bytes::from("hello/x"))).await {
        Err(TransportError::RpcFailure { message, .. }) => assert_eq!(message, UNKNOWN_CHALLENGE),
        other => panic!("{other:?}"),
    }
    // Nothing reached the handler, not even a connection event.
    assert!(handler.active.lock().unwrap().is_empty());
    assert!(handler.one_way.lock().unwrap().is_empty());
}

#[tokio::test]
async fn handshake_is_bounded_by_the_rpc_timeout() {
    let short = Duration::from_millis(300);
    // Server side: a peer that says nothing is dropped.
    let (server, _) = server(AuthConf::new("app", "good").rpc_timeout(short)).await;
    let mut s = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = within(s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "the server closes a silent connection");

    // Client side: a server that never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let _keep = sock;
        std::future::pending::<()>().await;
    });
    let err = within(
        factory(Some(AuthConf::new("app", "good").rpc_timeout(short)))
            .create_client("127.0.0.1", port),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, TransportError::AuthFailed { reason, .. } if reason.contains("spark.network.auth.rpcTimeout")),
        "{err}"
    );
    hold.abort();
}

#[tokio::test]
async fn cipher_or_version_mismatch_fails_at_the_first_message_with_a_clear_error() {
    init_tracing();
    let cases = [
        (
            (AuthCipher::Ctr, AuthVersion::V1),
            (AuthCipher::Gcm, AuthVersion::V1),
        ),
        (
            (AuthCipher::Gcm, AuthVersion::V1),
            (AuthCipher::Ctr, AuthVersion::V1),
        ),
        (
            (AuthCipher::Ctr, AuthVersion::V1),
            (AuthCipher::Ctr, AuthVersion::V2),
        ),
        (
            (AuthCipher::Gcm, AuthVersion::V2),
            (AuthCipher::Gcm, AuthVersion::V1),
        ),
    ];
    for ((sc, sv), (cc, cv)) in cases {
        let (server, handler) = server(conf("good", sc, sv)).await;
        let f = factory(Some(conf("good", cc, cv)));
        // The handshake itself succeeds: there is no key confirmation.
        let c = within(f.create_client("127.0.0.1", server.port()))
            .await
            .unwrap();
        let err = within(c.send_rpc(Bytes::from("hello/x")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no key confirmation"), "{err}");
        // The server's side says so too.
        wait_until("the server's error", || {
            !handler.errors.lock().unwrap().is_empty()
        })
        .await;
        let server_err = handler.errors.lock().unwrap()[0].to_string();
        assert!(server_err.contains("no key confirmation"), "{server_err}");
        assert!(handler.one_way.lock().unwrap().is_empty());
    }
}

/// At the connection cap, a connection still in its handshake (it connected and said nothing)
/// can be shed like one that never completed a frame: silent peers cannot keep an
/// authenticating client out for the length of the handshake timeout.
#[tokio::test]
async fn at_the_connection_cap_a_silent_handshake_is_shed_for_a_client() {
    init_tracing();
    let long = Duration::from_secs(600);
    let auth = AuthConf::new("app", "good").rpc_timeout(long);
    let tconf = TransportConf {
        max_inbound_connections: 2,
        handshake_timeout: Some(long),
        ..Default::default()
    };
    let server = TransportServer::bind_with_bootstraps(
        tconf,
        "127.0.0.1",
        0,
        Arc::new(TestHandler::default()),
        vec![Arc::new(AuthServerBootstrap::new(auth.clone()))],
    )
    .await
    .expect("bind");
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(
            TcpStream::connect(("127.0.0.1", server.port()))
                .await
                .unwrap(),
        );
    }
    let c = within(factory(Some(auth)).create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert_eq!(
        within(c.send_rpc(Bytes::from("hello/x"))).await.unwrap(),
        Bytes::from("Hello, x!")
    );
    // One of the silent peers made the room.
    let (mut a, mut b) = (silent.remove(0), silent.remove(0));
    let (mut buf_a, mut buf_b) = ([0u8; 16], [0u8; 16]);
    let n = within(async {
        tokio::select! {
            r = a.read(&mut buf_a) => r,
            r = b.read(&mut buf_b) => r,
        }
    })
    .await;
    assert_eq!(n.unwrap_or(0), 0, "a silent handshake was closed");
}
