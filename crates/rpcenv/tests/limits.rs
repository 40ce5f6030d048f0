//! The env under its limits: two envs asking each other with a small per-connection byte budget
//! make progress (no deadlock), and a shut-down env's port can be bound again at once.
//!
//! Every env binds 127.0.0.1 with port 0 (or the port the previous round released).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpcenv::{RpcEndpointRef, RpcEnv, RpcTimeout};

mod common;
use common::{suite_conf, Echo};

/// Two envs each keep 64 asks in flight towards the other's echo endpoint, over one connection
/// pair, with `rpc.io.maxQueuedBytesPerConnection=1m`: the 8 KiB asks and answers in flight go
/// over the budget, reading pauses and resumes, and both complete 100,000 asks.
#[test]
fn two_envs_asking_each_other_under_a_small_byte_budget_complete_every_ask() {
    const ASKS: usize = 100_000;
    const IN_FLIGHT: usize = 64;
    let conf = || {
        suite_conf()
            .with("rpc.io.maxQueuedBytesPerConnection", "1m")
            .unwrap()
    };
    let a = RpcEnv::builder("a").conf(conf()).build().unwrap();
    let b = RpcEnv::builder("b").conf(conf()).build().unwrap();
    a.setup_endpoint("echo", Echo).unwrap();
    b.setup_endpoint("echo", Echo).unwrap();
    let a_to_b: RpcEndpointRef<String> =
        a.setup_endpoint_ref(b.address().unwrap(), "echo").unwrap();
    let b_to_a: RpcEndpointRef<String> =
        b.setup_endpoint_ref(a.address().unwrap(), "echo").unwrap();
    let payload = "p".repeat(8 * 1024);
    let done = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let drive = |env: &RpcEnv, r: RpcEndpointRef<String>| {
        let (payload, done, answered) = (payload.clone(), done.clone(), answered.clone());
        env.runtime().spawn(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..IN_FLIGHT {
                let (r, payload, next) = (r.clone(), payload.clone(), next.clone());
                let answered = answered.clone();
                tasks.push(tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < ASKS {
                        let answer: String = r.ask(payload.clone()).await?;
                        assert_eq!(answer.len(), payload.len());
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, rpcenv::RpcError>(())
                }));
            }
            for t in tasks {
                t.await.expect("an asking task panicked")?;
            }
            done.fetch_add(1, Ordering::SeqCst);
            Ok::<_, rpcenv::RpcError>(())
        })
    };
    let from_a = drive(&a, a_to_b);
    let from_b = drive(&b, b_to_a);
    RpcTimeout::new(Duration::from_secs(600), "test.deadline")
        .await_result(async {
            from_a.await.expect("driver a")?;
            from_b.await.expect("driver b")
        })
        .unwrap_or_else(|e| panic!("the asks did not complete: {e}"));
    assert_eq!(done.load(Ordering::SeqCst), 2);
    assert_eq!(answered.load(Ordering::SeqCst), 2 * ASKS);
    a.shutdown();
    b.shutdown();
}

/// `shutdown()` returns once the port is released: binding the same port again at once
/// succeeds, 100 rounds, each with a connection accepted from another env.
#[test]
fn a_shut_down_env_port_can_be_bound_again_at_once() {
    let mut port = 0;
    for round in 0..100 {
        let env = RpcEnv::builder("rebound")
            .conf(suite_conf().with("port.maxRetries", "0").unwrap())
            .port(port)
            .build()
            .unwrap_or_else(|e| panic!("round {round}: binding port {port} again failed: {e}"));
        let address = env.address().unwrap().clone();
        assert!(port == 0 || address.port() == port);
        port = address.port();
        env.setup_endpoint("echo", Echo).unwrap();
        // A fresh asker each round: a pooled connection to the previous round's env would be
        // closed under it.
        let asker = RpcEnv::builder("asker")
            .client_mode(true)
            .conf(suite_conf())
            .build()
            .unwrap();
        let r: RpcEndpointRef<String> = asker.setup_endpoint_ref(&address, "echo").unwrap();
        assert_eq!(r.ask_sync::<String>("hi".into()).unwrap(), "hi");
        env.shutdown();
        asker.shutdown();
    }
}
