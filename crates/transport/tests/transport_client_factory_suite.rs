//! Spark's TransportClientFactorySuite (tests 73-81).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rpcenv_transport::{TransportClientFactory, TransportConf, TransportError};

fn factory(conf: TransportConf) -> TransportClientFactory {
    TransportClientFactory::new(conf, Arc::new(TestHandler::default()))
}

async fn reuse_clients_up_to(max: usize, concurrent: bool) {
    let (server, _) = test_server().await;
    let conf = TransportConf {
        num_connections_per_peer: max,
        ..TransportConf::default()
    };
    let f = factory(conf);
    let port = server.port();
    let clients = if concurrent {
        let tasks: Vec<_> = (0..10 * max)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.create_client("127.0.0.1", port).await })
            })
            .collect();
        let mut v = Vec::new();
        for t in tasks {
            v.push(within(t).await.unwrap().unwrap());
        }
        v
    } else {
        let mut v = Vec::new();
        for _ in 0..10 * max {
            v.push(within(f.create_client("127.0.0.1", port)).await.unwrap());
        }
        v
    };
    assert!(clients.iter().all(|c| c.is_active()));
    let distinct: HashSet<_> = clients.iter().map(|c| c.id()).collect();
    assert!(
        !distinct.is_empty() && distinct.len() <= max,
        "{} distinct for max {max}",
        distinct.len()
    );
    f.close();
}

#[tokio::test]
async fn transport_client_factory_suite_reuse_clients_up_to_config_variable() {
    for max in 1..=4 {
        reuse_clients_up_to(max, false).await;
    }
}

#[tokio::test]
async fn transport_client_factory_suite_reuse_clients_up_to_config_variable_concurrent() {
    for max in 1..=4 {
        reuse_clients_up_to(max, true).await;
    }
}

#[tokio::test]
async fn transport_client_factory_suite_return_different_clients_for_different_servers() {
    let (s1, _) = test_server().await;
    let (s2, _) = test_server().await;
    let f = factory(TransportConf::default());
    let c1 = within(f.create_client("127.0.0.1", s1.port()))
        .await
        .unwrap();
    let c2 = within(f.create_client("127.0.0.1", s2.port()))
        .await
        .unwrap();
    assert!(c1.is_active() && c2.is_active());
    assert_ne!(c1, c2);
    f.close();
}

#[tokio::test]
async fn transport_client_factory_suite_never_return_inactive_clients() {
    let (server, _) = test_server().await;
    let f = factory(TransportConf::default());
    let c1 = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    c1.close();
    wait_until("c1 inactive", || !c1.is_active()).await;
    let c2 = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert_ne!(c1, c2);
    assert!(c2.is_active());
}

#[tokio::test]
async fn transport_client_factory_suite_close_block_clients_with_factory() {
    let (server, _) = test_server().await;
    let f = factory(TransportConf::default());
    let c1 = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    let c2 = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert!(c1.is_active() && c2.is_active());
    f.close();
    wait_until("clients inactive", || !c1.is_active() && !c2.is_active()).await;
}

#[tokio::test]
async fn transport_client_factory_suite_close_idle_connection_for_request_time_out() {
    let (server, _) = test_server().await;
    let conf = TransportConf {
        connection_timeout: Some(Duration::from_secs(1)),
        close_idle_connections: true,
        ..TransportConf::default()
    };
    let f = factory(conf);
    let c = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert!(c.is_active());
    wait_until("idle client closed", || !c.is_active()).await;
}

#[tokio::test]
async fn transport_client_factory_suite_close_factory_before_create_client() {
    let (server, _) = test_server().await;
    let f = factory(TransportConf::default());
    f.close();
    let e = f
        .create_client("127.0.0.1", server.port())
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::FactoryClosed { .. }), "{e}");
}

async fn closed_port() -> u16 {
    let (server, _) = test_server().await;
    let port = server.port();
    server.close();
    within(server.closed()).await;
    port
}

#[tokio::test]
async fn transport_client_factory_suite_fast_fail_connection_in_time_window() {
    let port = closed_port().await;
    let f = factory(TransportConf::default());
    let e = within(f.create_client("127.0.0.1", port))
        .await
        .unwrap_err();
    assert!(matches!(e, TransportError::ConnectFailed { .. }), "{e}");
    let e = within(f.create_client("127.0.0.1", port))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("fail this connection directly"),
        "{e}"
    );
    assert!(matches!(e, TransportError::FastFail { .. }));
}

#[tokio::test]
async fn transport_client_factory_suite_unlimited_connection_and_creation_timeouts() {
    let (server, _) = test_server().await;
    let conf = TransportConf {
        connection_timeout: None,
        connect_timeout: None,
        close_idle_connections: true,
        fast_fail: false,
        ..TransportConf::default()
    };
    let f = factory(conf);
    let c = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert_eq!(
        within(c.send_rpc("hello/x")).await.unwrap(),
        "Hello, x!".as_bytes()
    );
    assert!(
        c.is_active(),
        "no idle timeout when the connection timeout is unlimited"
    );
    let port = closed_port().await;
    let e = within(f.create_client("127.0.0.1", port))
        .await
        .unwrap_err();
    assert!(std::error::Error::source(&e).is_some(), "{e} has a cause");
    assert!(
        e.to_string()
            .starts_with(&format!("Failed to connect to 127.0.0.1:{port}")),
        "{e}"
    );
}

#[test]
fn connect_timeout_error_names_the_peer_and_the_timeout() {
    let e = TransportError::ConnectTimeout {
        addr: "h:1".into(),
        timeout: Duration::from_millis(1500),
    };
    assert_eq!(e.to_string(), "Connecting to h:1 timed out (1500 ms)");
}

/// The pool keeps no entry for peers whose connections are gone: 20 peers seen one after the
/// other, each closing its connection, leave one entry, and a new peer's entry replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_peers_whose_connections_are_gone_are_dropped() {
    let f = factory(TransportConf::default());
    for _ in 0..20 {
        let (server, _) = test_server().await;
        let client = within(f.create_client("127.0.0.1", server.port()))
            .await
            .unwrap();
        server.close();
        within(server.closed()).await;
        within(client.closed()).await;
    }
    // Each new peer's entry replaced the gone ones.
    assert_eq!(f.pooled_peers(), 1);
    let (server, _) = test_server().await;
    within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert_eq!(f.pooled_peers(), 1);
    f.close();
}
