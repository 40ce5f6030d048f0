//! Backpressure hooks: a receiver that pauses reading makes the sender's queue grow
//! (`queued_bytes`), and resuming drains it without losing anything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpcenv_transport::{
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory, TransportConf,
    TransportError, TransportServer,
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

/// A server whose handler pauses reading at the first one-way message, a client connected to
/// it, and 128 MiB of one-way messages queued on the client: returns once the client's queue
/// has stopped draining (the server-side handle, and how many bytes stay queued).
async fn stalled_queue(
    handler: &Arc<PausingCounter>,
) -> (
    TransportServer,
    TransportClientFactory,
    TransportClient,
    TransportClient,
    usize,
) {
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
    (server, factory, client, server_side, stalled)
}

const MESSAGES: usize = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_holds_the_senders_queue_until_it_resumes() {
    let handler = Arc::new(PausingCounter::default());
    let (_server, _factory, client, server_side, stalled) = stalled_queue(&handler).await;
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

/// A task waiting for room in a full queue (`wait_queued_at_most`, what `send_async` and a full
/// outbox wait in) is woken with the connection's failure within 2 s when this side closes the
/// connection with `close()`, the reader still paused; so is a request waiting behind the
/// queue, and a waiter that starts after the close fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_for_queue_room_wakes_with_an_error_when_the_connection_is_closed_locally() {
    let handler = Arc::new(PausingCounter::default());
    let (_server, _factory, client, _server_side, stalled) = stalled_queue(&handler).await;
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.wait_queued_at_most(0).await })
    };
    let ask = client.send_rpc(Bytes::from_static(b"behind the queue"));
    let mut ask = std::pin::pin!(ask);
    assert!(
        futures_poll_once(ask.as_mut()).await.is_pending(),
        "the ask waits behind {stalled} queued bytes"
    );
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "the waiter waits for room");

    let closed = std::time::Instant::now();
    client.close();
    let woken = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter wakes within 2 s of close()")
        .unwrap();
    assert!(
        matches!(woken, Err(TransportError::ConnectionClosed { .. })),
        "{woken:?}"
    );
    let asked = tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .expect("the ask fails within 2 s of close()");
    assert!(
        matches!(asked, Err(TransportError::ConnectionClosed { .. })),
        "{asked:?}"
    );
    assert!(closed.elapsed() < Duration::from_secs(2));
    let late = tokio::time::timeout(Duration::from_secs(2), client.wait_queued_at_most(0))
        .await
        .expect("a waiter after the close returns at once");
    assert!(late.is_err(), "{late:?}");
}

/// Polls `f` once.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> std::task::Poll<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut f).poll(cx))).await
}
