//! Bad input closes only the offending connection, with a typed, logged error; the server keeps
//! serving the others.

mod common;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use rpcenv_transport::{TransportConf, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `bytes` (then maybe half-close), expect the server to close the connection.
async fn send_and_expect_close(port: u16, bytes: &[u8], half_close: bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut buf = [0u8; 64];
    let n = within(s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "the server closes the connection without answering");
}

#[tokio::test]
async fn bad_input_closes_only_that_connection() {
    init_tracing();
    let handler = Arc::new(TestHandler::default());
    let conf = TransportConf {
        max_frame_size: 1 << 20,
        ..TransportConf::default()
    };
    let server = server_with(conf, handler.clone()).await;
    let port = server.port();
    let (_f, good) = client_of(&server).await;

    // Garbage: its first 8 bytes read as a huge or negative length.
    send_and_expect_close(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
    // Oversized length (just above the cap).
    let mut oversized = BytesMut::new();
    oversized.put_i64(8 + (1 << 20) + 1);
    send_and_expect_close(port, &oversized, false).await;
    // Unknown type id.
    let mut unknown = BytesMut::new();
    unknown.put_i64(8 + 1 + 4);
    unknown.put_u8(42);
    unknown.put_i32(0);
    send_and_expect_close(port, &unknown, false).await;
    // Truncated frame, then close.
    let mut truncated = BytesMut::new();
    truncated.put_i64(8 + 1 + 12 + 100);
    truncated.put_u8(3);
    truncated.put_i64(1);
    send_and_expect_close(port, &truncated, true).await;
    // Length of zero body.
    let mut empty = BytesMut::new();
    empty.put_i64(8);
    send_and_expect_close(port, &empty, false).await;

    wait_until("five typed errors", || {
        handler.errors.lock().unwrap().len() == 5
    })
    .await;
    let errors = handler.errors.lock().unwrap().clone();
    let inner = |e: &TransportError| match e {
        TransportError::BadInput { source, .. } => (**source).clone(),
        other => other.clone(),
    };
    assert!(
        errors.iter().all(TransportError::is_bad_input),
        "{errors:?}"
    );
    assert!(errors
        .iter()
        .any(|e| matches!(inner(e), TransportError::FrameTooLarge { .. })));
    assert!(errors
        .iter()
        .any(|e| matches!(inner(e), TransportError::UnknownMessageType { type_id: 42 })));
    assert!(errors
        .iter()
        .any(|e| matches!(inner(e), TransportError::TruncatedFrame { .. })));
    assert!(errors.iter().any(|e| matches!(
        inner(e),
        TransportError::InvalidFrameLength { body_length: 0 }
    )));

    // The established connection and new ones still work.
    assert_eq!(
        within(good.send_rpc(Bytes::from("hello/still")))
            .await
            .unwrap(),
        "Hello, still!".as_bytes()
    );
    let (_f2, fresh) = client_of(&server).await;
    assert_eq!(
        within(fresh.send_rpc(Bytes::from("hello/new")))
            .await
            .unwrap(),
        "Hello, new!".as_bytes()
    );
}

#[tokio::test]
async fn oversized_upload_body_is_rejected_before_buffering() {
    let handler = Arc::new(TestHandler::default());
    let conf = TransportConf {
        max_frame_size: 1 << 16,
        ..TransportConf::default()
    };
    let server = server_with(conf, handler.clone()).await;
    let mut up = BytesMut::new();
    // UploadStream announcing a 1 GiB raw body.
    up.put_i64(8 + 1 + 8 + 4 + 8);
    up.put_u8(10);
    up.put_i64(1);
    up.put_i32(0);
    up.put_i64(1 << 30);
    send_and_expect_close(server.port(), &up, false).await;
    wait_until("typed error", || handler.errors.lock().unwrap().len() == 1).await;
}
