//! Client-mode envs: no server, so their endpoints are reached over the connection they opened,
//! and refs to them travel and work only along it.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use rpcenv::{
    EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcError,
    RpcTimeout,
};
use serde::{Deserialize, Serialize};

mod common;
use common::{client, server, Echo, SlowEcho, WAIT};

fn wait_for(timeout: &RpcTimeout) -> RpcTimeout {
    timeout.clone()
}

#[derive(Serialize, Deserialize)]
enum Registry {
    Register(RpcEndpointRef<String>),
}

impl rpcenv::RpcMessage for Registry {}

/// Stores the refs it is sent and the sender address of the ask.
struct RefStore(Sender<(RpcEndpointRef<String>, Option<RpcAddress>)>);

impl RpcEndpoint for RefStore {
    type Message = Registry;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Registry>,
        m: Registry,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        let Registry::Register(r) = m;
        self.0.send((r, ctx.sender_address().cloned()))?;
        ctx.reply("okay".to_string());
        Ok(())
    }
}

/// Spark: RpcEnvSuite "SPARK-31233: ask rpcEndpointRef in client mode timeout".
#[test]
fn spark_31233_ask_rpc_endpoint_ref_in_client_mode_timeout() {
    let env = server("server");
    let (tx, rx) = channel();
    env.setup_endpoint("ask-client-timeout", RefStore(tx))
        .unwrap();
    let another = client("client");
    let receiver = another
        .setup_endpoint("receiver", SlowEcho(Duration::from_millis(1200)))
        .unwrap();
    let store: RpcEndpointRef<Registry> = another
        .setup_endpoint_ref(env.address().unwrap(), "ask-client-timeout")
        .unwrap();
    let ok: String = store.ask_sync(Registry::Register(receiver)).unwrap();
    assert_eq!(ok, "okay");
    let (stored, sender) = rx.recv_timeout(WAIT).unwrap();
    let sender = sender.expect("the connection's address stands for a client-mode sender");
    let conf = env.conf().clone().with("rpc.askTimeout", "1s").unwrap();
    let timeout =
        RpcTimeout::from_conf_keys(&conf, &["rpc.askTimeout", "network.timeout"], "1s").unwrap();
    let e = RpcTimeout::new(Duration::from_millis(1300), "test.wait")
        .await_result(stored.ask_with_timeout::<String>("hi".into(), wait_for(&timeout)))
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(
        e.to_string().contains(&sender.to_string()),
        "{e} should name {sender}"
    );
    assert!(e.to_string().contains("rpc.askTimeout"), "{e}");
    // The client-mode endpoint is reachable over the client's connection: a normal ask works.
    assert_eq!(stored.ask_sync::<String>("hello".into()).unwrap(), "hello");
    another.shutdown();
    env.shutdown();
}

#[test]
fn a_ref_to_a_client_endpoint_without_a_connection_fails_clearly() {
    let env = server("server");
    let another = client("client");
    let r = another.setup_endpoint("receiver", Echo).unwrap();
    // Smuggle the address-less ref into the server without a connection: look it up by URI.
    let e = env
        .setup_endpoint_ref_by_uri::<String>(&r.endpoint_address().to_string())
        .unwrap_err();
    assert!(
        matches!(e, RpcError::ClientEndpointUnreachable { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("rpc-client://receiver"), "{e}");
    another.shutdown();
    env.shutdown();
}

#[derive(Serialize, Deserialize)]
enum Chain {
    /// B: forward this ref to C.
    Forward(RpcEndpointRef<String>),
    /// C: ask the ref and report the answer.
    AskIt(RpcEndpointRef<String>),
}

impl rpcenv::RpcMessage for Chain {}

struct Forwarder(RpcEndpointRef<Chain>);

impl RpcEndpoint for Forwarder {
    type Message = Chain;
    fn receive(&mut self, _: &EndpointCtx<Chain>, m: Chain) -> HandlerResult {
        if let Chain::Forward(r) = m {
            self.0.send(Chain::AskIt(r))?;
        }
        Ok(())
    }
}

struct Asker(Sender<Result<String, String>>);

impl RpcEndpoint for Asker {
    type Message = Chain;
    fn receive(&mut self, ctx: &EndpointCtx<Chain>, m: Chain) -> HandlerResult {
        if let Chain::AskIt(r) = m {
            // Ask without blocking the message loop: await on the env's runtime.
            let tx = self.0.clone();
            ctx.runtime().spawn(async move {
                let answer = r.ask::<String>("who are you?".into()).await;
                let _ = tx.send(answer.map_err(|e| e.to_string()));
            });
        }
        Ok(())
    }
}

#[test]
fn three_node_ref_chain() {
    let (a, b, c) = (server("A"), server("B"), server("C"));
    let a_echo = a.setup_endpoint("echo", Echo).unwrap();
    let (tx, rx) = channel();
    c.setup_endpoint("asker", Asker(tx)).unwrap();
    let c_from_b: RpcEndpointRef<Chain> =
        b.setup_endpoint_ref(c.address().unwrap(), "asker").unwrap();
    b.setup_endpoint("forwarder", Forwarder(c_from_b)).unwrap();
    let b_from_a: RpcEndpointRef<Chain> = a
        .setup_endpoint_ref(b.address().unwrap(), "forwarder")
        .unwrap();
    b_from_a.send(Chain::Forward(a_echo)).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), "who are you?");
    for env in [a, b, c] {
        env.shutdown();
    }
}

/// Counts what it receives and answers with the name of its env.
struct Named(&'static str, std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl RpcEndpoint for Named {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ctx.reply(format!("{}'s own a-service answers {m}", self.0));
        Ok(())
    }
}

/// A (client mode, connected to B) sends its ref to B, B forwards it to C, C asks it: the ref
/// cannot reach A from C (A's connection is to B), and B's endpoint of the same name must not
/// answer in A's place.
#[test]
fn a_forwarded_client_mode_ref_is_unreachable_and_never_misdelivered() {
    let (a, b, c) = (client("A"), server("B"), server("C"));
    let a_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let b_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a_service = a
        .setup_endpoint("a-service", Named("A", a_count.clone()))
        .unwrap();
    let b_service = b
        .setup_endpoint("a-service", Named("B", b_count.clone()))
        .unwrap();
    let (tx, rx) = channel();
    c.setup_endpoint("asker", Asker(tx)).unwrap();
    let c_from_b: RpcEndpointRef<Chain> =
        b.setup_endpoint_ref(c.address().unwrap(), "asker").unwrap();
    b.setup_endpoint("forwarder", Forwarder(c_from_b)).unwrap();
    let b_from_a: RpcEndpointRef<Chain> = a
        .setup_endpoint_ref(b.address().unwrap(), "forwarder")
        .unwrap();
    let start = std::time::Instant::now();
    b_from_a.send(Chain::Forward(a_service)).unwrap();
    let e = rx.recv_timeout(WAIT).unwrap().unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(e.contains("rpc-client://a-service"), "{e}");
    assert!(
        e.contains("client-mode endpoint of another connection"),
        "{e}"
    );
    // B's own a-service received nothing: the first message it gets is this one.
    assert_eq!(
        b_service.ask_sync::<String>("hi".into()).unwrap(),
        "B's own a-service answers hi"
    );
    assert_eq!(b_count.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(a_count.load(std::sync::atomic::Ordering::SeqCst), 0);
    for env in [a, b, c] {
        env.shutdown();
    }
}

/// Sends `r` from `from` to a new `store` endpoint of `to`; returns the ref as `to` received it.
fn hand_over(
    from: &rpcenv::RpcEnv,
    to: &rpcenv::RpcEnv,
    r: RpcEndpointRef<String>,
) -> RpcEndpointRef<String> {
    let (tx, rx) = channel();
    to.setup_endpoint("store", RefStore(tx)).unwrap();
    let store: RpcEndpointRef<Registry> = from
        .setup_endpoint_ref(to.address().unwrap(), "store")
        .unwrap();
    let ok: String = store.ask_sync(Registry::Register(r)).unwrap();
    assert_eq!(ok, "okay");
    rx.recv_timeout(WAIT).unwrap().0
}

/// The error C sees is the typed one.
#[test]
fn a_forwarded_client_mode_ref_fails_with_client_endpoint_unreachable() {
    let (a, b, c) = (client("A"), server("B"), server("C"));
    let a_service = a.setup_endpoint("a-service", Echo).unwrap();
    let at_b = hand_over(&a, &b, a_service);
    // B holds the ref over A's connection: it works from B.
    assert_eq!(at_b.ask_sync::<String>("from B".into()).unwrap(), "from B");
    let at_c = hand_over(&b, &c, at_b);
    let e = at_c.ask_sync::<String>("from C".into()).unwrap_err();
    assert!(
        matches!(e, RpcError::ClientEndpointUnreachable { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("rpc-client://a-service"), "{e}");
    assert!(matches!(
        at_c.send("one way".into()).unwrap_err(),
        RpcError::ClientEndpointUnreachable { .. }
    ));
    for env in [a, b, c] {
        env.shutdown();
    }
}
