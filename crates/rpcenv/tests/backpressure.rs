//! Bounds on what waits: `rpc.message.maxSize` checked before sending, and a slow endpoint's
//! backpressure reaching the sender's outbox (`QueueFull`, or `send_async` waiting for room).
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
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

/// A slow endpoint's inbox fills past `rpc.inbox.capacity`, pauses its connection, TCP fills,
/// the sender's outbox reaches `rpc.outbox.maxBytes`: `send` fails with QueueFull at once, and
/// `send_async` waits for room. Nothing accepted is lost.
#[test]
fn backpressure_from_a_slow_endpoint_reaches_the_sender() {
    let env = RpcEnv::builder("slow")
        .conf(suite_conf().with("rpc.inbox.capacity", "16").unwrap())
        .build()
        .unwrap();
    let open = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let count = Arc::new(AtomicUsize::new(0));
    env.setup_endpoint(
        "gate",
        Gate {
            open: open.clone(),
            count: count.clone(),
        },
    )
    .unwrap();
    let sender = RpcEnv::builder("fast")
        .client_mode(true)
        .conf(suite_conf().with("rpc.outbox.maxBytes", "256k").unwrap())
        .build()
        .unwrap();
    let r: RpcEndpointRef<String> = sender
        .setup_endpoint_ref(env.address().unwrap(), "gate")
        .unwrap();
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

/// While a handler waits for the answer to its ask back over the connection its requests come
/// on, more requests than `rpc.inbox.capacity` queue up behind it from that connection. They
/// wait within the connection's byte budget instead of pausing it: a later message on the same
/// connection (a probe) is still read, and the answer the handler waits for still arrives, so
/// every request completes (a paused connection would hold that answer until the ask timed
/// out).
#[test]
fn a_handler_asking_back_over_the_connection_feeding_its_full_inbox_completes() {
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
    env.setup_endpoint("worker", AsksBack).unwrap();
    env.setup_endpoint("probe", Echo).unwrap();
    // A client-mode env: its endpoint is reached over the very connection it opened.
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
    let worker: RpcEndpointRef<Job> = client
        .setup_endpoint_ref(env.address().unwrap(), "worker")
        .unwrap();
    let probe: RpcEndpointRef<String> = client
        .setup_endpoint_ref(env.address().unwrap(), "probe")
        .unwrap();
    let first = worker.ask::<String>(Job(held.clone(), 0));
    // The worker's handler now waits for its ask back.
    arrived.recv_timeout(common::WAIT).unwrap();
    let more: Vec<_> = (1..=16)
        .map(|n| worker.ask::<String>(Job(held.clone(), n)))
        .collect();
    // The connection is still read past the 16 queued requests.
    let wait = RpcTimeout::new(common::WAIT, "test.wait");
    assert_eq!(
        probe
            .ask_sync_with_timeout::<String>("probe".into(), wait)
            .unwrap(),
        "probe"
    );
    latch.open();
    assert_eq!(first.wait().unwrap(), "0");
    for (n, ask) in more.into_iter().enumerate() {
        assert_eq!(ask.wait().unwrap(), (n + 1).to_string());
    }
    client.shutdown();
    env.shutdown();
}
