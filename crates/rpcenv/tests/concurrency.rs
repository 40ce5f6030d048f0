//! Threads and order: one-at-a-time endpoints never run two messages at once, concurrent ones
//! do, isolated endpoints have their own loop, per-sender order holds, and many threads and
//! envs asking at once all get their replies.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use rpcenv::{
    ConcurrentRpcEndpoint, EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcTimeout,
};
use serde::{Deserialize, Serialize};

mod common;
use common::{client, env_with, new_env, server, Echo, WAIT};

/// Counts with a plain integer; also detects any overlap of two handler calls.
struct SequenceCounter {
    count: usize,
    inside: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
    done: Sender<usize>,
    target: usize,
}

impl RpcEndpoint for SequenceCounter {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.count += 1;
        std::hint::spin_loop();
        self.inside.store(false, Ordering::SeqCst);
        if self.count == self.target {
            self.done.send(self.count)?;
        }
        Ok(())
    }
}

/// Spark: RpcEnvSuite "call receive in sequence".
#[test]
fn call_receive_in_sequence() {
    let env = new_env();
    for round in 0..100 {
        let (tx, rx) = channel();
        let overlaps = Arc::new(AtomicUsize::new(0));
        let r = env
            .setup_endpoint(
                &format!("receive-in-sequence-{round}"),
                SequenceCounter {
                    count: 0,
                    inside: Arc::new(AtomicBool::new(false)),
                    overlaps: overlaps.clone(),
                    done: tx,
                    target: 1000,
                },
            )
            .unwrap();
        let senders: Vec<_> = (0..10)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        r.send("Hello".into()).unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1000);
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "handler calls overlapped"
        );
        env.stop(&r);
    }
    env.shutdown();
}

/// Blocks in receive_and_reply until released.
struct Blocker(Arc<Barrier>);

impl RpcEndpoint for Blocker {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        self.0.wait();
        ctx.reply("hi".to_string());
        Ok(())
    }
    fn isolated(&self) -> bool {
        true
    }
}

/// Spark: RpcEnvSuite "isolated endpoints".
#[test]
fn isolated_endpoints() {
    let env = env_with(&[("spark.rpc.netty.dispatcher.numThreads", "1")]);
    let release = Arc::new(Barrier::new(2));
    let blocker = env
        .setup_endpoint("blocker", Blocker(release.clone()))
        .unwrap();
    let blocked = blocker.ask_with_timeout::<String>(
        "hi".into(),
        RpcTimeout::new(Duration::from_secs(30), "test.wait"),
    );
    let echo = env.setup_endpoint("echo", Echo).unwrap();
    // The shared pool (one thread) still serves while the isolated endpoint blocks.
    assert_eq!(echo.ask_sync::<String>("hello".into()).unwrap(), "hello");
    release.wait();
    assert_eq!(blocked.wait().unwrap(), "hi");
    env.shutdown();
}

/// Two messages meet: only possible if they run at the same time. Fails (rather than hangs)
/// after a deadline.
struct Rendezvous {
    arrived: Mutex<usize>,
    cond: std::sync::Condvar,
    started: AtomicBool,
    message_before_start: AtomicBool,
}

impl ConcurrentRpcEndpoint for Rendezvous {
    type Message = String;
    fn on_start(&self, _: &EndpointCtx<String>) -> HandlerResult {
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn receive_and_reply(
        &self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        if !self.started.load(Ordering::SeqCst) {
            self.message_before_start.store(true, Ordering::SeqCst);
        }
        let mut n = self.arrived.lock().unwrap();
        *n += 1;
        self.cond.notify_all();
        let (n, timeout) = self.cond.wait_timeout_while(n, WAIT, |n| *n < 2).unwrap();
        drop(n);
        if timeout.timed_out() {
            return Err("the other message never ran concurrently".into());
        }
        ctx.reply(m);
        Ok(())
    }
}

#[test]
fn concurrent_endpoints_run_messages_on_several_threads() {
    let env = env_with(&[("rpc.netty.dispatcher.numThreads", "2")]);
    let ep = Arc::new(Rendezvous {
        arrived: Mutex::new(0),
        cond: std::sync::Condvar::new(),
        started: AtomicBool::new(false),
        message_before_start: AtomicBool::new(false),
    });
    struct Shared(Arc<Rendezvous>);
    impl ConcurrentRpcEndpoint for Shared {
        type Message = String;
        fn on_start(&self, ctx: &EndpointCtx<String>) -> HandlerResult {
            self.0.on_start(ctx)
        }
        fn receive_and_reply(
            &self,
            ctx: &EndpointCtx<String>,
            m: String,
            reply: RpcCallContext,
        ) -> HandlerResult {
            self.0.receive_and_reply(ctx, m, reply)
        }
    }
    let r = env
        .setup_concurrent_endpoint("rendezvous", Shared(ep.clone()))
        .unwrap();
    let a = r.ask::<String>("a".into());
    let b = r.ask::<String>("b".into());
    assert_eq!(a.wait().unwrap(), "a");
    assert_eq!(b.wait().unwrap(), "b");
    assert!(!ep.message_before_start.load(Ordering::SeqCst));
    env.shutdown();
}

/// The stress test of the issue: 8 threads x 10,000 asks to one endpoint; every reply matched to
/// its request, nothing lost, per-sender order kept.
#[test]
fn stress_eight_threads_ten_thousand_asks_each() {
    #[derive(Serialize, Deserialize)]
    struct Req {
        sender: usize,
        seq: usize,
    }
    impl rpcenv::RpcMessage for Req {}
    struct OrderChecker {
        next: Vec<usize>,
        out_of_order: usize,
    }
    impl RpcEndpoint for OrderChecker {
        type Message = Req;
        fn receive_and_reply(
            &mut self,
            _: &EndpointCtx<Req>,
            r: Req,
            ctx: RpcCallContext,
        ) -> HandlerResult {
            if self.next[r.sender] != r.seq {
                self.out_of_order += 1;
            }
            self.next[r.sender] = r.seq + 1;
            ctx.reply((r.sender, r.seq, self.out_of_order));
            Ok(())
        }
    }
    const THREADS: usize = 8;
    const ASKS: usize = 10_000;
    let env = new_env();
    let r = env
        .setup_endpoint(
            "stress",
            OrderChecker {
                next: vec![0; THREADS],
                out_of_order: 0,
            },
        )
        .unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|sender| {
            let r = r.clone();
            std::thread::spawn(move || {
                // Pipelined in windows of 100 outstanding asks.
                let mut replies = 0;
                for window in 0..ASKS / 100 {
                    let asks: Vec<_> = (0..100)
                        .map(|i| {
                            let seq = window * 100 + i;
                            (seq, r.ask::<(usize, usize, usize)>(Req { sender, seq }))
                        })
                        .collect();
                    for (seq, ask) in asks {
                        let (s, q, out_of_order) = ask.wait().unwrap();
                        assert_eq!((s, q), (sender, seq), "reply matched to its request");
                        assert_eq!(out_of_order, 0, "per-sender order kept");
                        replies += 1;
                    }
                }
                replies
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, THREADS * ASKS);
    env.shutdown();
}

#[test]
fn ten_envs_each_asking_every_other_a_thousand_times() {
    const ENVS: usize = 10;
    const ASKS: usize = 1000;
    let envs: Vec<RpcEnv> = (0..ENVS).map(|i| server(&format!("env{i}"))).collect();
    for env in &envs {
        env.setup_endpoint("echo", Echo).unwrap();
    }
    let addresses: Vec<RpcAddress> = envs.iter().map(|e| e.address().unwrap().clone()).collect();
    let workers: Vec<_> = envs
        .iter()
        .enumerate()
        .map(|(i, env)| {
            let env = env.clone();
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                let refs: Vec<(usize, RpcEndpointRef<String>)> = addresses
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, a)| (j, env.setup_endpoint_ref(a, "echo").unwrap()))
                    .collect();
                let mut correct = 0;
                for round in 0..ASKS / 100 {
                    let asks: Vec<_> = (0..100)
                        .flat_map(|k| {
                            refs.iter().map(move |(j, r)| {
                                let text = format!("{i}->{j}#{}", round * 100 + k);
                                (text.clone(), r.ask::<String>(text))
                            })
                        })
                        .collect();
                    for (text, ask) in asks {
                        assert_eq!(ask.wait().unwrap(), text);
                        correct += 1;
                    }
                }
                correct
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, ENVS * (ENVS - 1) * ASKS);
    for env in envs {
        env.shutdown();
    }
}

#[derive(Serialize, Deserialize)]
enum Seq {
    Item { sender: usize, seq: usize },
    Report,
}

impl rpcenv::RpcMessage for Seq {}

struct OrderChecker {
    next: Vec<usize>,
    out_of_order: usize,
    received: usize,
}

impl RpcEndpoint for OrderChecker {
    type Message = Seq;
    fn receive(&mut self, _: &EndpointCtx<Seq>, m: Seq) -> HandlerResult {
        if let Seq::Item { sender, seq } = m {
            if self.next[sender] != seq {
                self.out_of_order += 1;
            }
            self.next[sender] = seq + 1;
            self.received += 1;
        }
        Ok(())
    }
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Seq>,
        _: Seq,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        ctx.reply((self.received, self.out_of_order));
        Ok(())
    }
}

#[test]
fn messages_from_one_env_to_a_remote_endpoint_arrive_in_send_order() {
    const THREADS: usize = 4;
    const SENDS: usize = 5000;
    let env = server("receiver");
    env.setup_endpoint(
        "order",
        OrderChecker {
            next: vec![0; THREADS],
            out_of_order: 0,
            received: 0,
        },
    )
    .unwrap();
    let sender_env = server("sender");
    let r: RpcEndpointRef<Seq> = sender_env
        .setup_endpoint_ref(env.address().unwrap(), "order")
        .unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|sender| {
            let r = r.clone();
            std::thread::spawn(move || {
                for seq in 0..SENDS {
                    r.send(Seq::Item { sender, seq }).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The ask travels behind every send of this env on the same connection.
    let (received, out_of_order): (usize, usize) = r.ask_sync(Seq::Report).unwrap();
    assert_eq!(received, THREADS * SENDS);
    assert_eq!(out_of_order, 0);
    sender_env.shutdown();
    env.shutdown();
}

#[test]
fn concurrent_asks_from_many_threads_all_complete() {
    let env = server("server");
    env.setup_endpoint("echo", Echo).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "echo")
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let r = r.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let text = format!("{t}-{i}");
                    assert_eq!(r.ask_sync::<String>(text.clone()).unwrap(), text);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 4000);
    another.shutdown();
    env.shutdown();
}
