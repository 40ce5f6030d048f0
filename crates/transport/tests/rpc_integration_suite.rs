//! Spark's RpcIntegrationSuite (tests 86-95) and more request/response behaviour over TCP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rpcenv_transport::{
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory, TransportConf,
    TransportError,
};

async fn rpc(client: &TransportClient, msg: &str) -> Result<String, TransportError> {
    within(client.send_rpc(Bytes::from(msg.to_string())))
        .await
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

/// Results of several concurrent RPCs: (successes, error texts).
async fn rpcs(client: &TransportClient, msgs: &[&str]) -> (Vec<String>, Vec<String>) {
    let futs: Vec<_> = msgs
        .iter()
        .map(|m| client.send_rpc(Bytes::from(m.to_string())))
        .collect();
    let (mut ok, mut err) = (Vec::new(), Vec::new());
    for f in futs {
        match within(f).await {
            Ok(b) => ok.push(String::from_utf8(b.to_vec()).unwrap()),
            Err(e) => err.push(e.to_string()),
        }
    }
    ok.sort();
    (ok, err)
}

#[tokio::test]
async fn rpc_integration_suite_single_rpc() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    assert_eq!(rpc(&client, "hello/Aaron").await.unwrap(), "Hello, Aaron!");
}

#[tokio::test]
async fn rpc_integration_suite_double_rpc() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let (ok, err) = rpcs(&client, &["hello/Aaron", "hello/Reynold"]).await;
    assert_eq!(ok, vec!["Hello, Aaron!", "Hello, Reynold!"]);
    assert!(err.is_empty());
}

#[tokio::test]
async fn rpc_integration_suite_return_error_rpc() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let (ok, err) = rpcs(&client, &["return error/OK"]).await;
    assert!(ok.is_empty());
    assert!(err[0].contains("Returned: OK"), "{err:?}");
}

#[tokio::test]
async fn rpc_integration_suite_throw_error_rpc() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let (ok, err) = rpcs(&client, &["throw error/uh-oh"]).await;
    assert!(ok.is_empty());
    assert!(err[0].contains("Thrown: uh-oh"), "{err:?}");
    // The connection stays usable after a handler panic.
    assert_eq!(rpc(&client, "hello/again").await.unwrap(), "Hello, again!");
}

#[tokio::test]
async fn rpc_integration_suite_double_trouble() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let (ok, err) = rpcs(&client, &["return error/OK", "throw error/uh-oh"]).await;
    assert!(ok.is_empty());
    assert!(
        err[0].contains("Returned: OK") && err[1].contains("Thrown: uh-oh"),
        "{err:?}"
    );
}

#[tokio::test]
async fn rpc_integration_suite_send_success_and_failure() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let (ok, err) = rpcs(
        &client,
        &[
            "hello/Bob",
            "throw error/the",
            "hello/Builder",
            "return error/!",
        ],
    )
    .await;
    assert_eq!(ok, vec!["Hello, Bob!", "Hello, Builder!"]);
    assert!(
        err[0].contains("Thrown: the") && err[1].contains("Returned: !"),
        "{err:?}"
    );
}

#[tokio::test]
async fn rpc_integration_suite_send_one_way_message() {
    let (server, handler) = test_server().await;
    let (_f, client) = client_of(&server).await;
    client.send(Bytes::from("no reply")).unwrap();
    wait_until("one-way message arrives", || {
        handler.one_way.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(handler.one_way.lock().unwrap()[0], "no reply");
}

const UPLOADS: [&str; 4] = ["largeBuffer", "smallBuffer", "emptyBuffer", "file"];

#[tokio::test]
async fn rpc_integration_suite_send_rpc_with_stream_one_at_a_time() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    for name in UPLOADS {
        let r = within(client.upload_stream(Bytes::from(name), upload_body(name)))
            .await
            .unwrap();
        assert_eq!(r, name.as_bytes());
    }
}

#[tokio::test]
async fn rpc_integration_suite_send_rpc_with_stream_concurrently() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let futs: Vec<_> = (0..10)
        .map(|i| {
            let name = UPLOADS[i % UPLOADS.len()];
            (
                name,
                client.upload_stream(Bytes::from(name), upload_body(name)),
            )
        })
        .collect();
    for (name, f) in futs {
        assert_eq!(within(f).await.unwrap(), name.as_bytes());
    }
}

#[tokio::test]
async fn rpc_integration_suite_send_rpc_with_stream_failures() {
    // onComplete failure: an RpcFailure, and the connection stays usable for the next upload.
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let e = within(client.upload_stream(
        Bytes::from("fail/exception-oncomplete/smallBuffer"),
        upload_body("smallBuffer"),
    ))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("Failure post-processing"), "{e}");
    let ok =
        within(client.upload_stream(Bytes::from("smallBuffer"), upload_body("smallBuffer"))).await;
    assert_eq!(ok.unwrap(), "smallBuffer".as_bytes());
}

#[tokio::test]
async fn responder_moved_to_another_thread_answers_later() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    assert_eq!(
        rpc(&client, "later").await.unwrap(),
        "answered from a thread"
    );
}

#[tokio::test]
async fn dropped_responder_answers_rpc_failure() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let e = rpc(&client, "drop").await.unwrap_err();
    assert!(matches!(e, TransportError::RpcFailure { .. }), "{e}");
    assert!(e.to_string().contains("without answering"), "{e}");
}

#[tokio::test]
async fn large_rpc_bodies_round_trip() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let body = pattern(3 << 20);
    assert_eq!(within(client.send_rpc(body.clone())).await.unwrap(), body);
}

#[tokio::test]
async fn many_pipelined_rpcs_complete() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let futs: Vec<_> = (0..5000u32)
        .map(|i| client.send_rpc(Bytes::from(i.to_be_bytes().to_vec())))
        .collect();
    for (i, f) in futs.into_iter().enumerate() {
        assert_eq!(
            within(f).await.unwrap(),
            (i as u32).to_be_bytes().as_slice()
        );
    }
}

#[tokio::test]
async fn cancelled_rpc_is_removed_and_late_answer_dropped() {
    let (server, handler) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let fut = client.send_rpc(Bytes::from("withhold"));
    wait_until("request reaches the handler", || {
        handler.withheld.lock().unwrap().len() == 1
    })
    .await;
    drop(fut);
    // Answer it now: the client must drop the late answer and keep working.
    handler
        .withheld
        .lock()
        .unwrap()
        .pop()
        .unwrap()
        .respond(Bytes::from("late"));
    assert_eq!(rpc(&client, "hello/x").await.unwrap(), "Hello, x!");
}

/// A handler that, on "call me back", asks the requester over the same connection
/// (connections are bidirectional: either side can issue requests).
struct CallBack;

impl RpcHandler for CallBack {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        if &message[..] == b"call me back" {
            let fut = client.send_rpc(Bytes::from("hello/server"));
            tokio::spawn(async move {
                match fut.await {
                    Ok(b) => responder.respond(b),
                    Err(e) => responder.fail(e.to_string()),
                }
            });
        } else {
            responder.respond(message);
        }
    }
}

#[tokio::test]
async fn server_issues_requests_over_an_accepted_connection() {
    let server = server_with(TransportConf::default(), Arc::new(CallBack)).await;
    let factory =
        TransportClientFactory::new(TransportConf::default(), Arc::new(TestHandler::default()));
    let client = factory
        .create_client("127.0.0.1", server.port())
        .await
        .unwrap();
    assert_eq!(
        rpc(&client, "call me back").await.unwrap(),
        "Hello, server!"
    );
}

#[tokio::test]
async fn closed_connection_fails_all_outstanding_requests_at_once() {
    let (server, handler) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let futs: Vec<_> = (0..3)
        .map(|_| client.send_rpc(Bytes::from("withhold")))
        .collect();
    wait_until("requests reach the handler", || {
        handler.withheld.lock().unwrap().len() == 3
    })
    .await;
    server.close();
    for f in futs {
        let e = within(f).await.unwrap_err();
        assert!(matches!(e, TransportError::ConnectionClosed { .. }), "{e}");
        assert!(
            e.to_string().contains(&server.local_addr().to_string()),
            "{e}"
        );
    }
    wait_until("client inactive", || !client.is_active()).await;
    assert!(client.send(Bytes::from("x")).is_err());
    assert!(within(client.send_rpc(Bytes::from("x"))).await.is_err());
    within(server.closed()).await;
}

#[tokio::test]
async fn client_close_fails_outstanding_and_notifies_both_sides() {
    let (server, handler) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let fut = client.send_rpc(Bytes::from("withhold"));
    wait_until("request reaches the handler", || {
        handler.withheld.lock().unwrap().len() == 1
    })
    .await;
    client.close();
    assert!(!client.is_active());
    let e = within(fut).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("Connection from {} closed", server.local_addr())
    );
    wait_until("server side inactive", || {
        handler.inactive.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(handler.active.lock().unwrap().len(), 1);
}

#[test]
fn send_rpc_sync_works_from_a_plain_thread_and_refuses_runtime_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (server, client) = rt.block_on(async {
        let (server, _) = test_server().await;
        let (f, client) = client_of(&server).await;
        std::mem::forget(f);
        (server, client)
    });
    let r = client
        .send_rpc_sync(Bytes::from("hello/sync"), DEADLINE)
        .unwrap();
    assert_eq!(r, "Hello, sync!".as_bytes());
    let e = client
        .send_rpc_sync(Bytes::from("withhold"), Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    let c2 = client.clone();
    let e = rt
        .block_on(async move { c2.send_rpc_sync(Bytes::from("hello/x"), DEADLINE) })
        .unwrap_err();
    assert!(matches!(e, TransportError::BlockingInRuntime { .. }), "{e}");
    drop(server);
}
