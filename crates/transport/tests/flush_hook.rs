//! The flush hook: a producer thread that answers a request writes the answer itself through
//! `TransportClient::try_flush` when the connection's task is not busy, and the task writes it
//! otherwise. Either way every answer arrives, once, matched to its request.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use common::*;
use rpcenv_transport::{
    RpcHandler, RpcResponder, TransportClient, TransportConf, TransportError, WriteNow,
};

/// Hands every request to a producer thread, which answers and then calls the flush hook.
struct ViaProducer {
    work: Mutex<mpsc::Sender<(TransportClient, Bytes, RpcResponder)>>,
}

impl RpcHandler for ViaProducer {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        let _ = self
            .work
            .lock()
            .unwrap()
            .send((client.clone(), message, responder));
    }
}

/// Starts a producer thread answering what `ViaProducer` hands it: with `respond_now`, or with
/// `respond` then `try_flush`. Counts the answers it wrote itself.
fn producer(
    now: bool,
) -> (
    Arc<ViaProducer>,
    Arc<AtomicUsize>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel::<(TransportClient, Bytes, RpcResponder)>();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let thread = std::thread::spawn(move || {
        for (client, message, responder) in rx {
            if now {
                if responder.respond_now(message) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                responder.respond(message);
                if client.try_flush() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let handler = Arc::new(ViaProducer {
        work: Mutex::new(tx),
    });
    (handler, written, thread)
}

/// Pipelined requests answered by a producer that flushes after each answer: every answer
/// arrives, matched to its request, whether the producer or the task wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_flushed_by_a_producer_all_arrive() {
    let (handler, _, thread) = producer(false);
    let server = server_with(TransportConf::default(), handler).await;
    let (_f, client) = client_of(&server).await;
    let answers: Vec<_> = (0..2000)
        .map(|i| (i, client.send_rpc(Bytes::from(format!("{i}")))))
        .collect();
    for (i, answer) in answers {
        assert_eq!(within(answer).await.unwrap(), Bytes::from(format!("{i}")));
    }
    server.close();
    within(server.closed()).await;
    thread.join().unwrap();
}

/// One request at a time: the connection's task is parked when the producer answers, so
/// `respond_now` writes the answer from the producer's thread; every answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_now_writes_from_the_producer_when_the_task_is_parked() {
    let (handler, written, thread) = producer(true);
    let server = server_with(TransportConf::default(), handler).await;
    let (_f, client) = client_of(&server).await;
    for i in 0..500 {
        let answer = client.send_rpc(Bytes::from(format!("{i}")));
        assert_eq!(within(answer).await.unwrap(), Bytes::from(format!("{i}")));
    }
    // The task is parked while the client waits for each answer; the producer meets it busy
    // only when its wake-up races the end of the task's turn.
    let direct = written.load(Ordering::Relaxed);
    assert!(direct > 0, "no answer of 500 was written by the producer");
    eprintln!("{direct} of 500 answers written by the producer itself");
    server.close();
    within(server.closed()).await;
    thread.join().unwrap();
}

#[tokio::test]
async fn the_flush_hook_of_a_closed_connection_does_nothing() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    client.close();
    within(client.closed()).await;
    assert!(!client.try_flush());
}

type Answer = Result<Bytes, TransportError>;

/// Sends `body` with `send_rpc_with_callback_now`; the answer comes on the returned channel.
fn ask_now(client: &TransportClient, body: Bytes, when: WriteNow) -> mpsc::Receiver<Answer> {
    let (tx, rx) = mpsc::channel();
    client.send_rpc_with_callback_now(
        body,
        move |answer| {
            let _ = tx.send(answer);
        },
        when,
    );
    rx
}

fn answer_of(rx: &mpsc::Receiver<Answer>) -> Answer {
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("every request is answered")
}

/// Requests written by their caller (a plain thread, one at a time, and many in flight from
/// tasks, which the flush hook leaves to the connection's task) are all answered, each with its
/// own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_written_through_the_flush_hook_are_all_answered() {
    let (handler, _, thread) = producer(true);
    let server = server_with(TransportConf::default(), handler).await;
    let (_f, client) = client_of(&server).await;
    let caller = client.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..500 {
            let rx = ask_now(&caller, Bytes::from(format!("{i}")), WriteNow::Always);
            assert_eq!(answer_of(&rx).unwrap(), Bytes::from(format!("{i}")));
        }
    })
    .await
    .unwrap();
    for when in [WriteNow::Always, WriteNow::WhenAlone] {
        let waiting: Vec<_> = (0..1000)
            .map(|i| (i, ask_now(&client, Bytes::from(format!("{i}")), when)))
            .collect();
        for (i, rx) in waiting {
            let rx = tokio::task::spawn_blocking(move || answer_of(&rx));
            assert_eq!(rx.await.unwrap().unwrap(), Bytes::from(format!("{i}")));
        }
    }
    server.close();
    within(server.closed()).await;
    thread.join().unwrap();
}

/// A request sent this way on a closed connection fails at once with the connection's error.
#[tokio::test]
async fn a_request_written_now_on_a_closed_connection_fails() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    client.close();
    within(client.closed()).await;
    for when in [WriteNow::Always, WriteNow::WhenAlone] {
        let rx = ask_now(&client, Bytes::from_static(b"x"), when);
        assert!(matches!(
            answer_of(&rx),
            Err(TransportError::ConnectionClosed { .. })
        ));
    }
}

/// Records, for each request, whether a thread answering at that moment could write through
/// the flush hook (`try_flush`: the connection is not held), and answers it.
#[derive(Default)]
struct Probe {
    free: Mutex<Vec<(String, bool)>>,
}

impl RpcHandler for Probe {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        let free = client.try_flush();
        let name = String::from_utf8_lossy(&message).into_owned();
        self.free.lock().unwrap().push((name, free));
        responder.respond(message);
    }
}

/// A lone request is handed to the handler after the connection's turn, with the connection
/// free (the thread that answers it can write the answer itself); requests that a read brings
/// together are handed over as they are decoded, with the connection held (their answers are
/// queued for the connection's task, which writes them together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_arrive_together_are_handed_over_during_the_turn() {
    let probe = Arc::new(Probe::default());
    let server = server_with(TransportConf::default(), probe.clone()).await;
    let mut peer = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let request = |id: i64, body: &'static str| {
        rpcenv_transport::Message::RpcRequest {
            request_id: id,
            body: Bytes::from(body).into(),
        }
        .to_bytes()
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // One request, and its answer read back before anything else is sent.
    peer.write_all(&request(1, "alone")).await.unwrap();
    wait_until("the lone request", || probe.free.lock().unwrap().len() == 1).await;
    let mut answer = vec![0u8; request(1, "alone").len()];
    within(peer.read_exact(&mut answer)).await.unwrap();
    // Three requests in one write.
    let mut burst = Vec::new();
    for (id, body) in [(2, "first"), (3, "second"), (4, "third")] {
        burst.extend_from_slice(&request(id, body));
    }
    peer.write_all(&burst).await.unwrap();
    wait_until("the three requests", || {
        probe.free.lock().unwrap().len() == 4
    })
    .await;
    let seen = probe.free.lock().unwrap().clone();
    assert_eq!(seen[0], ("alone".to_string(), true), "{seen:?}");
    // The burst may be read in pieces; the requests that came in one read with others were
    // handed over with the connection held, in order.
    let names: Vec<_> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alone", "first", "second", "third"]);
    assert!(
        seen[1..].iter().any(|(_, free)| !free),
        "every request of the burst was handed over with the connection free: {seen:?}"
    );
    server.close();
    within(server.closed()).await;
}
