//! Spark's RequestTimeoutIntegrationSuite (tests 83-84): a connection with outstanding requests
//! and no traffic for the connection timeout is closed and its requests fail.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rpcenv_transport::{TransportClientFactory, TransportConf, TransportError};

fn short_timeout() -> TransportConf {
    TransportConf {
        connection_timeout: Some(Duration::from_secs(1)),
        ..TransportConf::default()
    }
}

#[tokio::test]
async fn request_timeout_integration_suite_timeout_inactive_requests() {
    let handler = Arc::new(TestHandler::default());
    let server = server_with(short_timeout(), handler.clone()).await;
    let f = TransportClientFactory::new(short_timeout(), Arc::new(TestHandler::default()));
    let client = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    // First request answered.
    let body = Bytes::from(vec![7u8; 16]);
    assert_eq!(within(client.send_rpc(body.clone())).await.unwrap(), body);
    // Second hangs: the idle timeout fails it and closes the connection.
    let e = within(client.send_rpc(Bytes::from("withhold")))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::IdleTimeout { .. }), "{e}");
    assert!(
        e.to_string().contains("spark.rpc.io.connectionTimeout"),
        "{e}"
    );
    assert!(
        e.to_string().contains(&server.local_addr().to_string()),
        "{e}"
    );
    assert!(!client.is_active());
}

#[tokio::test]
async fn request_timeout_integration_suite_timeout_cleanly_closes_client() {
    let handler = Arc::new(TestHandler::default());
    let server = server_with(short_timeout(), handler.clone()).await;
    let f = TransportClientFactory::new(short_timeout(), Arc::new(TestHandler::default()));
    let client0 = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    let e = within(client0.send_rpc(Bytes::from("withhold")))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::IdleTimeout { .. }), "{e}");
    assert!(!client0.is_active());
    let client1 = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert_ne!(client0, client1);
    let body = Bytes::from(vec![1u8; 16]);
    assert_eq!(within(client1.send_rpc(body.clone())).await.unwrap(), body);
}
