//! Bounds on what waits: `rpc.message.maxSize` checked before sending, and a slow endpoint's
//! backpressure reaching the sender's outbox (`QueueFull`, or `send_async` waiting for room).
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use rpcenv::{
    EndpointCtx, HandlerResult, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError, RpcTimeout,
};

mod common;
use common::{server, suite_conf, Echo};

#[test]
fn messages_over_rpc_message_max_size_fail_before_sending() {
    let env = server("server");
    env.setup_endpoint("echo", Echo).unwrap();
    let conf = suite_conf().with("rpc.message.maxSize", "1k").unwrap();
    let another = RpcEnv::builder("client")
        .client_mode(true)
        .conf(conf)
        .build()
        .unwrap();
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "echo")
        .unwrap();
    let big = "x".repeat(4096);
    let e = r.send(big.clone()).unwrap_err();
    assert!(
        matches!(e, RpcError::MessageTooLarge { max: 1024, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("rpc.message.maxSize"), "{e}");
    let e = r.ask_sync::<String>(big).unwrap_err();
    assert!(matches!(e, RpcError::MessageTooLarge { .. }), "{e:?}");
    // Small messages still go through.
    assert_eq!(r.ask_sync::<String>("small".into()).unwrap(), "small");
    another.shutdown();
    env.shutdown();
}

/// Holds every message until opened, then counts them.
struct Gate {
    open: GateLatch,
    count: Arc<AtomicUsize>,
}

impl RpcEndpoint for Gate {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
        let (lock, cond) = &*self.open;
        let (open, timeout) = cond
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(60), |open| !*open)
            .unwrap();
        if timeout.timed_out() && !*open {
            return Err("the gate was never opened".into());
        }
        drop(open);
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Waits (up to a minute) until the gate has counted all `accepted` messages, and no more.
fn all_arrive(count: &AtomicUsize, accepted: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < accepted {
        assert!(
            Instant::now() < deadline,
            "only {} of {accepted} arrived",
            count.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count.load(Ordering::SeqCst), accepted);
}

/// The probe (an echo on the server) answers within the suite's wait: the connection it is
/// asked over is still read.
fn probe_answers(probe: &RpcEndpointRef<String>) {
    let wait = RpcTimeout::new(common::WAIT, "test.wait");
    assert_eq!(
        probe
            .ask_sync_with_timeout::<String>("probe".into(), wait)
            .unwrap(),
        "probe"
    );
}

/// A gate and whoever opens it.
type GateLatch = Arc<(Mutex<bool>, std::sync::Condvar)>;

/// A server env (inbox capacity 16, and `budget` as its connections' byte budget when given)
/// whose "gate" endpoint holds every message until opened, with an echoing "probe"; and a
/// client-mode sender env with a 256 KiB outbox and refs to both.
struct Gated {
    env: RpcEnv,
    sender: RpcEnv,
    gate: RpcEndpointRef<String>,
    probe: RpcEndpointRef<String>,
    open: GateLatch,
    count: Arc<AtomicUsize>,
}

fn gated(budget: Option<&str>) -> Gated {
    let mut conf = suite_conf().with("rpc.inbox.capacity", "16").unwrap();
    if let Some(budget) = budget {
        conf = conf
            .with("rpc.io.maxQueuedBytesPerConnection", budget)
            .unwrap();
    }
    let env = RpcEnv::builder("slow").conf(conf).build().unwrap();
    let open = GateLatch::default();
    let count = Arc::new(AtomicUsize::new(0));
    env.setup_endpoint(
        "gate",
        Gate {
            open: open.clone(),
            count: count.clone(),
        },
    )
    .unwrap();
    env.setup_endpoint("probe", Echo).unwrap();
    let sender = RpcEnv::builder("sender")
        .client_mode(true)
        .conf(suite_conf().with("rpc.outbox.maxBytes", "256k").unwrap())
        .build()
        .unwrap();
    let gate = sender
        .setup_endpoint_ref(env.address().unwrap(), "gate")
        .unwrap();
    let probe = sender
        .setup_endpoint_ref(env.address().unwrap(), "probe")
        .unwrap();
    Gated {
        env,
        sender,
        gate,
        probe,
        open,
        count,
    }
}

/// A slow endpoint's inbox fills past `rpc.inbox.capacity`, the messages past it exhaust their
/// connection's byte budget, the connection stops being read, TCP fills, the sender's outbox
/// reaches `rpc.outbox.maxBytes`: `send` fails with QueueFull at once, and
/// `send_async` waits for room. Nothing accepted is lost.
#[test]
fn backpressure_from_a_slow_endpoint_reaches_the_sender() {
    let Gated {
        env,
        sender,
        gate: r,
        open,
        count,
        ..
    } = gated(None);
    let payload = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut accepted = 0usize;
    let full = loop {
        assert!(Instant::now() < deadline, "the outbox never filled");
        match r.send(payload.clone()) {
            Ok(()) => accepted += 1,
            Err(e @ RpcError::QueueFull { .. }) => break e,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    };
    assert!(full.to_string().contains("rpc.outbox.maxBytes"), "{full}");
    // An ask is refused the same way rather than queued without bound. (The queue may drain a
    // little between two posts, so refill it until an ask meets a full outbox.)
    let short = RpcTimeout::new(Duration::from_millis(1), "test.short");
    loop {
        assert!(Instant::now() < deadline, "no ask was refused");
        match r
            .ask_with_timeout::<String>(payload.clone(), short.clone())
            .wait()
        {
            Err(RpcError::QueueFull { .. }) => break,
            _ => {
                while r.send(payload.clone()).is_ok() {
                    accepted += 1;
                }
            }
        }
    }

    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    let more = 200;
    RpcTimeout::new(Duration::from_secs(60), "test.wait")
        .await_result(async {
            for _ in 0..more {
                r.send_async(payload.clone()).await?;
            }
            Ok(())
        })
        .unwrap();
    accepted += more;
    all_arrive(&count, accepted);
    sender.shutdown();
    env.shutdown();
}

/// A request for `worker`, carrying the ref it asks back.
#[derive(serde::Serialize, serde::Deserialize)]
struct Job(RpcEndpointRef<String>, u32);

impl rpcenv::RpcMessage for Job {}

/// For every job, asks back the ref it carries (over the connection the job came on) and
/// replies with the answer.
struct AsksBack;

impl RpcEndpoint for AsksBack {
    type Message = Job;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Job>,
        Job(back, n): Job,
        ctx: rpcenv::RpcCallContext,
    ) -> HandlerResult {
        let answer = back.ask_sync::<String>(n.to_string())?;
        ctx.reply(answer);
        Ok(())
    }
}

/// Holds the asks it gets until opened, then answers them and every later one with their text.
#[derive(Clone, Default)]
struct Latch(Arc<Mutex<(bool, Vec<HeldAsk>)>>);

/// An ask the latch holds, and its text.
type HeldAsk = (rpcenv::RpcCallContext, String);

impl Latch {
    fn open(&self) {
        let held = {
            let mut st = self.0.lock().unwrap();
            st.0 = true;
            std::mem::take(&mut st.1)
        };
        for (ctx, m) in held {
            ctx.reply(m);
        }
    }
}

struct Held(Latch, std::sync::mpsc::Sender<()>);

impl RpcEndpoint for Held {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: rpcenv::RpcCallContext,
    ) -> HandlerResult {
        let mut st = (self.0).0.lock().unwrap();
        if st.0 {
            drop(st);
            ctx.reply(m);
        } else {
            st.1.push((ctx, m));
            self.1.send(())?;
        }
        Ok(())
    }
}

/// A server (`rpc.inbox.capacity` 4) with `endpoint` as "worker" and an echoing "probe", and a
/// client-mode env whose "held" endpoint (behind a latch) is reached over the very connection
/// it opened; `arrived` signals each ask the latch holds.
struct AskBackSetup {
    env: RpcEnv,
    client: RpcEnv,
    latch: Latch,
    arrived: std::sync::mpsc::Receiver<()>,
    held: RpcEndpointRef<String>,
    worker: RpcEndpointRef<Job>,
    probe: RpcEndpointRef<String>,
}

fn ask_back_setup<E: RpcEndpoint<Message = Job>>(endpoint: E) -> AskBackSetup {
    let env = RpcEnv::builder("server")
        .conf(
            suite_conf()
                .with("rpc.inbox.capacity", "4")
                .unwrap()
                .with("rpc.askTimeout", "30s")
                .unwrap(),
        )
        .build()
        .unwrap();
    env.setup_endpoint("worker", endpoint).unwrap();
    env.setup_endpoint("probe", Echo).unwrap();
    let client = RpcEnv::builder("client")
        .client_mode(true)
        .conf(suite_conf().with("rpc.askTimeout", "30s").unwrap())
        .build()
        .unwrap();
    let latch = Latch::default();
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let held = client
        .setup_endpoint("held", Held(latch.clone(), arrived_tx))
        .unwrap();
    let worker = client
        .setup_endpoint_ref(env.address().unwrap(), "worker")
        .unwrap();
    let probe = client
        .setup_endpoint_ref(env.address().unwrap(), "probe")
        .unwrap();
    AskBackSetup {
        env,
        client,
        latch,
        arrived,
        held,
        worker,
        probe,
    }
}

/// While a handler waits for the answer to its ask back over the connection its requests come
/// on, more requests than `rpc.inbox.capacity` queue up behind it from that connection. They
/// wait within the connection's byte budget instead of pausing it: a later message on the same
/// connection (a probe) is still read, and the answer the handler waits for still arrives, so
/// every request completes (a paused connection would hold that answer until the ask timed
/// out).
#[test]
fn a_handler_asking_back_over_the_connection_feeding_its_full_inbox_completes() {
    let AskBackSetup {
        env,
        client,
        latch,
        arrived,
        held,
        worker,
        probe,
    } = ask_back_setup(AsksBack);
    let first = worker.ask::<String>(Job(held.clone(), 0));
    // The worker's handler now waits for its ask back.
    arrived.recv_timeout(common::WAIT).unwrap();
    let more: Vec<_> = (1..=16)
        .map(|n| worker.ask::<String>(Job(held.clone(), n)))
        .collect();
    // The connection is still read past the 16 queued requests.
    probe_answers(&probe);
    latch.open();
    assert_eq!(first.wait().unwrap(), "0");
    for (n, ask) in more.into_iter().enumerate() {
        assert_eq!(ask.wait().unwrap(), (n + 1).to_string());
    }
    client.shutdown();
    env.shutdown();
}

/// For every one-way job, asks back the ref it carries (over the connection the job came on)
/// and reports the answer.
struct RelaysBack(std::sync::mpsc::Sender<String>);

impl RpcEndpoint for RelaysBack {
    type Message = Job;
    fn receive(&mut self, _: &EndpointCtx<Job>, Job(back, n): Job) -> HandlerResult {
        let answer = back.ask_sync::<String>(n.to_string())?;
        self.0.send(answer)?;
        Ok(())
    }
}

/// The one-way variant: while a handler waits for the answer to its ask back over the
/// connection its messages come on, more one-way messages than `rpc.inbox.capacity` queue up
/// behind it from that connection. They wait within the connection's byte budget instead of
/// pausing it: a later ask on the same connection (a probe) is still read, the answer the
/// handler waits for still arrives, and every message is handled.
#[test]
fn a_one_way_handler_asking_back_over_the_connection_feeding_its_over_capacity_inbox_completes() {
    let (answers_tx, answers) = std::sync::mpsc::channel();
    let AskBackSetup {
        env,
        client,
        latch,
        arrived,
        held,
        worker: relay,
        probe,
    } = ask_back_setup(RelaysBack(answers_tx));
    relay.send(Job(held.clone(), 0)).unwrap();
    // The relay's handler now waits for its ask back.
    arrived.recv_timeout(common::WAIT).unwrap();
    for n in 1..=16 {
        relay.send(Job(held.clone(), n)).unwrap();
    }
    // Sent after the 16 on the same connection: answered only if the connection is still read
    // with the relay's inbox over its capacity.
    probe_answers(&probe);
    latch.open();
    for n in 0..=16 {
        assert_eq!(answers.recv_timeout(common::WAIT).unwrap(), n.to_string());
    }
    client.shutdown();
    env.shutdown();
}

/// Opens a gate when dropped, so that a failing test does not leave its handlers waiting.
struct OpenOnDrop(GateLatch);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0 .1.notify_all();
    }
}

/// The peak resident memory of this process, in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A peer floods one-way messages into an endpoint that handles none of them. Past the inbox's
/// capacity they count in the connection's byte budget: while under it the connection is still
/// read (an ask on it is answered), and once it is exhausted the server stops reading, so the
/// flood backs up into the sender's outbox instead of the server's memory. Nothing accepted is
/// lost once the endpoint goes on.
#[test]
fn a_one_way_flood_into_a_slow_endpoint_is_bounded_by_the_connection_byte_budget() {
    const PIECE: usize = 16 * 1024;
    const FLOOD_CAP: usize = 128 << 20;
    let Gated {
        env,
        sender,
        gate,
        probe,
        open,
        count,
    } = gated(Some("1m"));
    let opener = OpenOnDrop(open);
    let before = vm_hwm_kib();
    let small = "s".repeat(1024);
    let wait = RpcTimeout::new(common::WAIT, "test.wait");
    // Over the capacity (64 > 16), well under the budget (64 KiB < 1 MiB): still read.
    let mut accepted = 0usize;
    for _ in 0..64 {
        wait.await_result(gate.send_async(small.clone())).unwrap();
        accepted += 1;
    }
    probe_answers(&probe);
    // The flood: waits for room in the outbox while the server reads; stops once no room comes
    // for 5 s (the server stopped reading), or fails after 128 MiB.
    let payload = "x".repeat(PIECE);
    let stalled = RpcTimeout::new(Duration::from_secs(5), "test.stalled");
    let mut flooded = 0usize;
    loop {
        assert!(
            flooded < FLOOD_CAP,
            "the server read {flooded} bytes of one-way messages its endpoint never handled"
        );
        match stalled.await_result(gate.send_async(payload.clone())) {
            Ok(()) => {
                accepted += 1;
                flooded += PIECE;
            }
            Err(RpcError::Timeout { .. }) => break,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    drop(opener);
    all_arrive(&count, accepted);
    let growth_kib = vm_hwm_kib().saturating_sub(before);
    assert!(
        growth_kib < 64 * 1024,
        "VmHWM grew by {growth_kib} KiB for a flood of {flooded} bytes"
    );
    sender.shutdown();
    env.shutdown();
}

/// A sender waiting in `send_async` for room in a full outbox (the peer's endpoint handles
/// nothing and its connection's byte budget is exhausted, so nothing drains) is woken with an
/// error within 2 s when its own env closes the connection (shutdown), not left waiting.
#[test]
fn send_async_waiting_for_room_fails_fast_when_the_connection_is_closed_locally() {
    let Gated {
        env,
        sender,
        gate: r,
        open,
        ..
    } = gated(Some("256k"));
    let opener = OpenOnDrop(open);
    let payload = "x".repeat(16 * 1024);
    // Fill until a send_async finds no room for 2 s: every buffer on the way is full.
    let no_room = RpcTimeout::new(Duration::from_secs(2), "test.no_room");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the outbox never stayed full");
        match no_room.await_result(r.send_async(payload.clone())) {
            Ok(()) => {}
            Err(RpcError::Timeout { .. }) => break,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let sender = &sender;
        let closer = s.spawn(move || {
            waiting_rx.recv().unwrap();
            let closing = Instant::now();
            sender.shutdown();
            closing
        });
        let result =
            RpcTimeout::new(Duration::from_secs(10), "test.wake.deadline").await_result(async {
                let mut waiting = std::pin::pin!(r.send_async(payload.clone()));
                let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
                assert!(first.is_pending(), "send_async waits for room: {first:?}");
                waiting_tx.send(()).unwrap();
                Ok(waiting.await)
            });
        let woken = Instant::now();
        let result = result.expect("the waiting send_async returns");
        assert!(
            matches!(result, Err(RpcError::Connection { .. })),
            "the connection's failure: {result:?}"
        );
        let closing = closer.join().unwrap();
        let took = woken.saturating_duration_since(closing);
        assert!(
            took < Duration::from_secs(2),
            "woken {took:?} after the close: {result:?}"
        );
    });
    drop(opener);
    env.shutdown();
}
