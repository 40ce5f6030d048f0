//! What a peer sends on one connection is acted on in the order it was sent. A lone request a
//! turn of the connection reads is handed to the handler after that turn, outside the
//! connection's lock, and a response read after it waits until it has been handed over;
//! requests that a read brings together are handed over as they are decoded.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use rpcenv_transport::{Message, RpcHandler, RpcResponder, TransportClient, TransportConf};
use tokio::io::AsyncWriteExt;

/// Logs what reaches it; keeps the server side's handle of the connection.
#[derive(Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    client: Mutex<Option<TransportClient>>,
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl RpcHandler for Recorder {
    fn receive(&self, _client: &TransportClient, message: Bytes, responder: RpcResponder) {
        self.log
            .lock()
            .unwrap()
            .push(format!("request {}", text(&message)));
        responder.respond(message);
    }

    fn receive_one_way(&self, _client: &TransportClient, message: Bytes) {
        self.log
            .lock()
            .unwrap()
            .push(format!("one-way {}", text(&message)));
    }

    fn channel_active(&self, client: &TransportClient) {
        *self.client.lock().unwrap() = Some(client.clone());
    }
}

/// The peer answers the server's request in the same write as requests sent before and after
/// the answer: the handler sees the requests before it and the answer's callback runs between
/// them and the one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_is_handled_in_its_place_among_requests() {
    let handler = Arc::new(Recorder::default());
    let server = server_with(TransportConf::default(), handler.clone()).await;
    let mut peer = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    wait_until("the server's side of the connection", || {
        handler.client.lock().unwrap().is_some()
    })
    .await;
    let client = handler.client.lock().unwrap().clone().unwrap();
    let log = handler.log.clone();
    let id = client.send_rpc_with_callback(Bytes::from("question"), move |answer| {
        let answer = answer.map(|b| text(&b)).unwrap_or_else(|e| e.to_string());
        log.lock().unwrap().push(format!("response {answer}"));
    });

    let mut burst = Vec::new();
    for msg in [
        Message::OneWayMessage {
            body: Bytes::from("a").into(),
        },
        Message::RpcRequest {
            request_id: 7,
            body: Bytes::from("b").into(),
        },
        Message::RpcResponse {
            request_id: id,
            body: Bytes::from("r").into(),
        },
        Message::OneWayMessage {
            body: Bytes::from("c").into(),
        },
    ] {
        burst.extend_from_slice(&msg.to_bytes());
    }
    peer.write_all(&burst).await.unwrap();

    wait_until("everything the peer sent", || {
        handler.log.lock().unwrap().len() == 4
    })
    .await;
    assert_eq!(
        *handler.log.lock().unwrap(),
        ["one-way a", "request b", "response r", "one-way c"]
    );
    server.close();
    within(server.closed()).await;
}
