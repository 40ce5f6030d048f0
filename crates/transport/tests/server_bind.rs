//! Bind with port retries (a taken port is retried upward) and graceful close.

mod common;

use std::sync::Arc;

use common::*;
use rpcenv_transport::{TransportConf, TransportError, TransportServer};

#[tokio::test]
async fn port_conflict_moves_to_the_next_port() {
    let (first, _) = test_server().await;
    let port = first.port();
    if port == 65535 {
        return; // the retry would wrap to 1024, which this test does not control
    }
    let second = TransportServer::bind(
        TransportConf::default(),
        "127.0.0.1",
        port,
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap();
    assert_ne!(second.port(), port);
}

#[tokio::test]
async fn exhausted_retries_name_the_service_and_the_setting() {
    let (first, _) = test_server().await;
    let conf = TransportConf {
        port_max_retries: 0,
        service_name: "sparkDriver".into(),
        ..TransportConf::default()
    };
    let e = TransportServer::bind(
        conf,
        "127.0.0.1",
        first.port(),
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, TransportError::BindFailed { .. }));
    let text = e.to_string();
    assert!(
        text.contains("Service 'sparkDriver' failed after 0 retries"),
        "{text}"
    );
    assert!(text.contains("spark.port.maxRetries"), "{text}");
}

#[tokio::test]
async fn privileged_ports_are_refused() {
    let e = TransportServer::bind(
        TransportConf::default(),
        "127.0.0.1",
        80,
        Arc::new(TestHandler::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, TransportError::InvalidPort { port: 80 }));
}

#[tokio::test]
async fn close_stops_accepting_and_releases_the_port() {
    let (server, handler) = test_server().await;
    let (_f, client) = client_of(&server).await;
    // Make sure the server has accepted the connection before closing.
    within(client.send_rpc(bytes::Bytes::from("hello/x")))
        .await
        .unwrap();
    server.close();
    within(server.closed()).await;
    wait_until("client sees the close", || !client.is_active()).await;
    assert!(tokio::net::TcpStream::connect(server.local_addr())
        .await
        .is_err());
    wait_until("inactive callback", || {
        handler.inactive.lock().unwrap().len() == 1
    })
    .await;
    // The port can be bound again at once.
    let again = TransportServer::bind(
        TransportConf::default(),
        "127.0.0.1",
        server.port(),
        handler,
    )
    .await;
    assert_eq!(again.unwrap().port(), server.port());
}
