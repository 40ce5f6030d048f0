//! Backpressure hooks: a receiver that pauses reading makes the sender's queue grow
//! (`queued_bytes`), and resuming drains it without losing anything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpcenv_transport::{
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory, TransportConf,
    TransportServer,
};

/// Counts one-way messages; pauses the connection it reads from at the first one.
#[derive(Default)]
struct PausingCounter {
    count: AtomicUsize,
    paused: Mutex<Option<TransportClient>>,
}

impl RpcHandler for PausingCounter {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        responder.respond(message);
    }
    fn receive_one_way(&self, client: &TransportClient, _: Bytes) {
        if self.count.fetch_add(1, Ordering::SeqCst) == 0 {
            client.pause_reading();
            *self.paused.lock().unwrap() = Some(client.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_holds_the_senders_queue_until_it_resumes() {
    let handler = Arc::new(PausingCounter::default());
    let server = TransportServer::bind(TransportConf::default(), "127.0.0.1", 0, handler.clone())
        .await
        .unwrap();
    let factory = TransportClientFactory::new(
        TransportConf::default(),
        Arc::new(rpcenv_transport::NoOpRpcHandler),
    );
    let client = factory
        .create_client("127.0.0.1", server.port())
        .await
        .unwrap();
    const MESSAGES: usize = 2048;
    let body = Bytes::from(vec![7u8; 64 * 1024]);
    for _ in 0..MESSAGES {
        client.send(body.clone()).unwrap();
    }
    // 128 MiB cannot fit in the socket buffers and the writer's 4 MiB: with the reader paused,
    // bytes stay queued on the sender's side.
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let paused = handler.paused.lock().unwrap().clone();
            if let Some(c) = paused {
                if c.is_reading_paused() && client.queued_bytes() > 0 {
                    let stalled = client.queued_bytes();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if client.queued_bytes() == stalled {
                        return (c, stalled);
                    }
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (server_side, stalled) = waited.expect("the queue stalls while reading is paused");
    assert!(stalled > 0);
    assert!(handler.count.load(Ordering::SeqCst) < MESSAGES);

    server_side.resume_reading();
    tokio::time::timeout(Duration::from_secs(30), client.wait_queued_at_most(0))
        .await
        .expect("the queue drains once reading resumes")
        .expect("the connection stays open");
    tokio::time::timeout(Duration::from_secs(30), async {
        while handler.count.load(Ordering::SeqCst) < MESSAGES {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every message arrives");
    assert_eq!(handler.count.load(Ordering::SeqCst), MESSAGES);
}
