//! The remote tests of Spark's RpcEnvSuite / NettyRpcEnvSuite (catalog §3.1), ported, plus the
//! remote acceptance tests of the issue: a three-node ref chain, ten envs asking each other,
//! per-sender order under concurrency, and a peer process killed mid-ask.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels or futures with deadlines.

use std::future::Future;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use rpcenv::{
    EndpointCtx, FailureKind, HandlerResult, RpcAddress, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcError, RpcTimeout,
};
use serde::{Deserialize, Serialize};

mod common;
use common::{suite_conf, Acker, Echo, FailureSender, Forward, Hoarder, SelfReplier};

const WAIT: Duration = Duration::from_secs(10);

fn server(name: &str) -> RpcEnv {
    RpcEnv::builder(name).conf(suite_conf()).build().unwrap()
}

fn client(name: &str) -> RpcEnv {
    RpcEnv::builder(name)
        .client_mode(true)
        .conf(suite_conf())
        .build()
        .unwrap()
}

fn wait_for(timeout: &RpcTimeout) -> RpcTimeout {
    timeout.clone()
}

#[test]
fn send_a_message_remotely() {
    let env = server("server");
    let (tx, rx) = channel();
    env.setup_endpoint("send-remotely", Forward(tx)).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "send-remotely")
        .unwrap();
    r.send("hello".into()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "hello");
    another.shutdown();
    another.await_termination().unwrap();
    env.shutdown();
}

#[test]
fn ask_a_message_remotely() {
    let env = server("server");
    env.setup_endpoint("ask-remotely", Echo).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref_by_uri(&format!("rpc://ask-remotely@{}", env.address().unwrap()))
        .unwrap();
    assert_eq!(r.ask_sync::<String>("hello".into()).unwrap(), "hello");
    another.shutdown();
    env.shutdown();
}

/// Answers after a delay, from another thread (Spark's test endpoint sleeps in the handler).
struct SlowEcho(Duration);

impl RpcEndpoint for SlowEcho {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        let delay = self.0;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            ctx.reply(m);
        });
        Ok(())
    }
}

#[test]
fn ask_a_message_timeout() {
    let env = server("server");
    env.setup_endpoint("ask-timeout", SlowEcho(Duration::from_millis(100)))
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "ask-timeout")
        .unwrap();
    let short = RpcTimeout::new(Duration::from_millis(1), "spark.rpc.short.timeout");
    let e = r
        .ask_sync_with_timeout::<String>("hello".into(), short)
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("spark.rpc.short.timeout"), "{text}");
    assert!(text.contains("ask-timeout"), "{text}");
    // The late reply is dropped; the connection keeps working.
    assert_eq!(r.ask_sync::<String>("again".into()).unwrap(), "again");
    another.shutdown();
    env.shutdown();
}

#[test]
fn ask_a_message_abort() {
    let env = server("server");
    env.setup_endpoint("ask-abort", Hoarder(Vec::new()))
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "ask-abort")
        .unwrap();
    let ask = r.ask_with_timeout::<String>(
        "hello".into(),
        RpcTimeout::new(Duration::from_secs(10), "rpc.askTimeout"),
    );
    let abort = ask.abort_handle();
    let aborter = std::thread::spawn(move || abort.abort("TestAbort"));
    let e = ask.wait().unwrap_err();
    aborter.join().unwrap();
    match e {
        RpcError::Aborted { reason, .. } => assert!(reason.to_string().contains("TestAbort")),
        other => panic!("expected Aborted, got {other:?}"),
    }
    another.shutdown();
    env.shutdown();
}

#[test]
fn send_with_reply_remotely() {
    let env = server("server");
    env.setup_endpoint("sendWithReply-remotely", Acker).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "sendWithReply-remotely")
        .unwrap();
    let reply = RpcTimeout::new(WAIT, "test.wait")
        .await_result(r.ask::<String>("hi".into()))
        .unwrap();
    assert_eq!(reply, "ack");
    another.shutdown();
    env.shutdown();
}

#[test]
fn send_with_reply_remotely_error() {
    let env = server("server");
    env.setup_endpoint("sendWithReply-remotely-error", FailureSender)
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "sendWithReply-remotely-error")
        .unwrap();
    let e = r.ask_sync::<String>("hi".into()).unwrap_err();
    let failure = e.failure().expect("a failure");
    assert_eq!(failure.message(), "Oops");
    assert_eq!(failure.kind(), FailureKind::Reported);
    another.shutdown();
    env.shutdown();
}

/// A reply type whose serialization always fails.
#[derive(Debug)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unserializable)
    }
}

struct UnserializableReplier;

impl RpcEndpoint for UnserializableReplier {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        ctx.reply(Unserializable);
        Ok(())
    }
}

/// Rust analog of "sendWithReply: unserializable error": what cannot be serialized is replaced
/// by the serialization error itself.
#[test]
fn send_with_reply_unserializable_error() {
    let env = server("server");
    env.setup_endpoint("unserializable", UnserializableReplier)
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "unserializable")
        .unwrap();
    let e = r.ask_sync::<Unserializable>("hi".into()).unwrap_err();
    let failure = e.failure().expect("a failure");
    assert_eq!(failure.kind(), FailureKind::Serialization);
    // (postcard does not keep a custom serialization error's text.)
    assert!(failure.message().contains("could not be serialized"), "{e}");
    another.shutdown();
    env.shutdown();
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NetEvent {
    Connected(RpcAddress),
    Disconnected(RpcAddress),
    NetworkError(RpcAddress),
}

/// Records network events; ignores messages.
struct EventRecorder(Sender<NetEvent>);

impl RpcEndpoint for EventRecorder {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
        Ok(())
    }
    /// Answers with the sender address the asker announced and the connection's own address.
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        let answer = (ctx.sender_address().cloned(), ctx.connection_address());
        ctx.reply(answer);
        Ok(())
    }
    fn on_connected(&mut self, _: &EndpointCtx<String>, a: &RpcAddress) -> HandlerResult {
        let _ = self.0.send(NetEvent::Connected(a.clone()));
        Ok(())
    }
    fn on_disconnected(&mut self, _: &EndpointCtx<String>, a: &RpcAddress) -> HandlerResult {
        let _ = self.0.send(NetEvent::Disconnected(a.clone()));
        Ok(())
    }
    fn on_network_error(
        &mut self,
        _: &EndpointCtx<String>,
        _: &RpcError,
        a: &RpcAddress,
    ) -> HandlerResult {
        let _ = self.0.send(NetEvent::NetworkError(a.clone()));
        Ok(())
    }
}

/// Waits for an event matching `pred`; fails after the deadline.
fn expect_event(rx: &Receiver<NetEvent>, what: &str, pred: impl Fn(&NetEvent) -> bool) -> NetEvent {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(e) if pred(&e) => return e,
            Ok(e) => seen.push(e),
            Err(_) => break,
        }
    }
    panic!("no {what} within {WAIT:?}; saw {seen:?}");
}

#[test]
fn network_events_in_server_rpc_env_when_another_rpc_env_is_in_server_mode() {
    let env1 = server("env1");
    let env2 = server("env2");
    let (tx1, rx1) = channel();
    let (tx2, _rx2) = channel();
    env1.setup_endpoint("network-events-non-client", EventRecorder(tx1))
        .unwrap();
    env2.setup_endpoint("network-events-non-client", EventRecorder(tx2))
        .unwrap();
    let r: RpcEndpointRef<String> = env1
        .setup_endpoint_ref(env2.address().unwrap(), "network-events-non-client")
        .unwrap();
    r.send("hello".into()).unwrap();
    let env2_address = env2.address().unwrap().clone();
    expect_event(&rx1, "onConnected(env2)", |e| {
        *e == NetEvent::Connected(env2_address.clone())
    });
    env2.shutdown();
    env2.await_termination().unwrap();
    expect_event(&rx1, "onDisconnected(env2)", |e| {
        *e == NetEvent::Disconnected(env2_address.clone())
    });
    env1.shutdown();
}

#[test]
fn an_ask_names_its_connection_and_on_disconnected_names_it_when_it_closes() {
    let env1 = server("env1");
    let env2 = server("env2");
    let (tx1, rx1) = channel();
    env1.setup_endpoint("connection-id", EventRecorder(tx1))
        .unwrap();
    let r: RpcEndpointRef<String> = env2
        .setup_endpoint_ref(env1.address().unwrap(), "connection-id")
        .unwrap();
    let (sender, connection): (Option<RpcAddress>, Option<std::net::SocketAddr>) =
        r.ask_sync("who".into()).unwrap();
    // The sender is what env2 announces (its listen address); the connection is the socket's.
    assert_eq!(sender.as_ref(), env2.address());
    let connection = RpcAddress::from_socket_addr(connection.expect("a remote ask"));
    assert_ne!(Some(&connection), env2.address());
    env2.shutdown();
    env2.await_termination().unwrap();
    expect_event(&rx1, "onDisconnected(the ask's connection)", |e| {
        *e == NetEvent::Disconnected(connection.clone())
    });
    // A local ask came over no connection.
    let local: RpcEndpointRef<String> = env1.endpoint_ref("connection-id").unwrap();
    let (_, connection): (Option<RpcAddress>, Option<std::net::SocketAddr>) =
        local.ask_sync("who".into()).unwrap();
    assert_eq!(connection, None);
    env1.shutdown();
}

#[test]
fn network_events_in_server_rpc_env_when_another_rpc_env_is_in_client_mode() {
    let env = server("server");
    let (tx, rx) = channel();
    env.setup_endpoint("network-events", EventRecorder(tx))
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "network-events")
        .unwrap();
    r.send("hello".into()).unwrap();
    let connected = expect_event(&rx, "onConnected", |e| matches!(e, NetEvent::Connected(_)));
    another.shutdown();
    another.await_termination().unwrap();
    let NetEvent::Connected(peer) = connected else {
        unreachable!()
    };
    expect_event(&rx, "onDisconnected", |e| {
        *e == NetEvent::Disconnected(peer.clone())
    });
    env.shutdown();
}

#[test]
fn network_events_in_client_rpc_env_when_another_rpc_env_is_in_server_mode() {
    let env = server("server");
    env.setup_endpoint("network-events", Forward(channel().0))
        .unwrap();
    let another = client("client");
    let (tx, rx) = channel();
    another
        .setup_endpoint("network-events", EventRecorder(tx))
        .unwrap();
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "network-events")
        .unwrap();
    r.send("hello".into()).unwrap();
    let server_address = env.address().unwrap().clone();
    expect_event(&rx, "onConnected(server)", |e| {
        *e == NetEvent::Connected(server_address.clone())
    });
    env.shutdown();
    env.await_termination().unwrap();
    expect_event(&rx, "onDisconnected(server)", |e| {
        *e == NetEvent::Disconnected(server_address.clone())
    });
    another.shutdown();
}

#[test]
fn port_conflict() {
    let env = server("server");
    let port = env.address().unwrap().port();
    let another = RpcEnv::builder("conflict")
        .port(port)
        .conf(suite_conf())
        .build()
        .unwrap();
    let bound = another.address().unwrap().port();
    assert_ne!(bound, port);
    another.shutdown();
    env.shutdown();
}

/// Records on_stop / on_disconnected / on_network_error.
struct ShutdownProbe(Arc<Mutex<Vec<&'static str>>>);

impl RpcEndpoint for ShutdownProbe {
    type Message = String;
    fn on_disconnected(&mut self, _: &EndpointCtx<String>, _: &RpcAddress) -> HandlerResult {
        self.0.lock().unwrap().push("onDisconnected");
        Ok(())
    }
    fn on_network_error(
        &mut self,
        _: &EndpointCtx<String>,
        _: &RpcError,
        _: &RpcAddress,
    ) -> HandlerResult {
        self.0.lock().unwrap().push("onNetworkError");
        Ok(())
    }
    fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        self.0.lock().unwrap().push("onStop");
        Ok(())
    }
}

#[test]
fn spark_14699_rpc_env_shutdown_should_not_fire_on_disconnected_events() {
    let env = server("server");
    env.setup_endpoint("SPARK-14699", Echo).unwrap();
    let another = server("another");
    let calls = Arc::new(Mutex::new(Vec::new()));
    another
        .setup_endpoint("mock", ShutdownProbe(calls.clone()))
        .unwrap();
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "SPARK-14699")
        .unwrap();
    assert_eq!(r.ask_sync::<String>("hello".into()).unwrap(), "hello");
    another.shutdown();
    another.await_termination().unwrap();
    assert_eq!(*calls.lock().unwrap(), vec!["onStop"]);
    env.shutdown();
}

#[test]
fn non_existent_endpoint() {
    let env = server("server");
    let port = env.address().unwrap().port();
    let uri = format!("rpc://nonexist-endpoint@127.0.0.1:{port}");
    // From the env itself and from another env (through the verifier).
    let e = env
        .setup_endpoint_ref::<String>(env.address().unwrap(), "nonexist-endpoint")
        .unwrap_err();
    assert!(
        matches!(&e, RpcError::EndpointNotFound { uri: u } if *u == uri),
        "{e:?}"
    );
    let another = client("client");
    let e = another
        .setup_endpoint_ref::<String>(env.address().unwrap(), "nonexist-endpoint")
        .unwrap_err();
    assert!(e.to_string().contains(&uri), "{e}");
    another.shutdown();
    env.shutdown();
}

#[test]
fn a_lookup_with_the_wrong_message_type_fails_naming_both() {
    let env = server("server");
    env.setup_endpoint("echo", Echo).unwrap();
    let another = client("client");
    match another
        .setup_endpoint_ref::<u64>(env.address().unwrap(), "echo")
        .unwrap_err()
    {
        RpcError::MessageTypeMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, "u64");
            assert_eq!(actual, "alloc::string::String");
        }
        other => panic!("expected MessageTypeMismatch, got {other:?}"),
    }
    another.shutdown();
    env.shutdown();
}

#[test]
fn advertise_address_different_from_bind_address() {
    let env = RpcEnv::builder("advertised")
        .conf(suite_conf())
        .bind_host("127.0.0.1")
        .advertise_host("example.com")
        .build()
        .unwrap();
    assert!(env
        .address()
        .unwrap()
        .host_port()
        .starts_with("example.com:"));
    env.shutdown();
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

#[test]
fn send_a_rpc_endpoint_ref_remotely() {
    let env = server("server");
    let local = env.setup_endpoint("send-ref", SelfReplier).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "send-ref")
        .unwrap();
    let new_ref: RpcEndpointRef<String> = r.ask_sync("Hello".into()).unwrap();
    assert_eq!(new_ref, local);
    assert_eq!(new_ref.ask_sync::<String>("Echo".into()).unwrap(), "Echo");
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

#[test]
fn an_unreachable_peer_fails_asks_with_a_connection_error_naming_it() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = client("client");
    let e = env
        .setup_endpoint_ref::<String>(&RpcAddress::new("127.0.0.1", port), "master")
        .unwrap_err();
    assert!(matches!(e, RpcError::Connection { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    env.shutdown();
}

// ---------------------------------------------------------------------------------------------
// A peer in another process, killed with SIGKILL mid-ask.

const PEER_ENV: &str = "RPCENV_TEST_PEER_PORT";

/// Not a test of its own: the body of the peer process the test below starts (this test binary
/// re-run with `RPCENV_TEST_PEER_PORT` set). Without that variable it returns at once.
#[test]
fn peer_process() {
    let Ok(port) = std::env::var(PEER_ENV) else {
        return;
    };
    let env = RpcEnv::builder("peer")
        .conf(suite_conf().with("rpc.inbox.capacity", "16").unwrap())
        .port(port.parse().unwrap())
        .build()
        .unwrap();
    env.setup_endpoint("echo", Echo).unwrap();
    env.setup_endpoint("never", Hoarder(Vec::new())).unwrap();
    // Never opened: its inbox fills and pauses the connections that feed it.
    let closed_gate = Gate {
        open: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
        count: Arc::new(AtomicUsize::new(0)),
    };
    env.setup_endpoint("gate", closed_gate).unwrap();
    println!("PEER-PORT {}", env.address().unwrap().port());
    // Serve until killed, or until the parent goes away (stdin closes).
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_peer(port: u16) -> (Peer, u16) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["peer_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(PEER_ENV, port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The test harness may print "test peer_process ... " before it on the same line.
            if let Some((_, p)) = line.split_once("PEER-PORT ") {
                let _ = tx.send(p.trim().parse::<u16>().unwrap());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the peer process reports its port");
    (Peer(child), port)
}

#[test]
fn a_peer_killed_mid_ask_fails_the_ask_fast_and_fires_on_disconnected_then_reconnects() {
    let (peer, port) = start_peer(0);
    let peer_address = RpcAddress::new("127.0.0.1", port);
    let env = server("survivor");
    let (tx, rx) = channel();
    env.setup_endpoint("events", EventRecorder(tx)).unwrap();
    let never: RpcEndpointRef<String> = env.setup_endpoint_ref(&peer_address, "never").unwrap();
    let echo: RpcEndpointRef<String> = env.setup_endpoint_ref(&peer_address, "echo").unwrap();
    assert_eq!(echo.ask_sync::<String>("before".into()).unwrap(), "before");

    // The ask's own timeout is the default 120 s; the kill must end it much sooner.
    let pending = never.ask::<String>("hello".into());
    let started = Instant::now();
    drop(peer); // SIGKILL
    let e = RpcTimeout::new(Duration::from_secs(5), "test.kill.deadline")
        .await_result(pending)
        .unwrap_err();
    assert!(matches!(e, RpcError::Connection { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    expect_event(&rx, "onDisconnected(peer)", |e| {
        *e == NetEvent::Disconnected(peer_address.clone())
    });

    // The peer comes back on the same port: sending again reconnects.
    let (_peer, again) = start_peer(port);
    assert_eq!(again, port);
    assert_eq!(echo.ask_sync::<String>("after".into()).unwrap(), "after");
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

/// A sender waiting in `send_async` for room in a full outbox is woken with an error as soon as
/// the connection is reset under it (the peer, which stopped reading, is killed), not left waiting.
#[test]
fn send_async_waiting_for_room_fails_fast_when_the_peer_resets_the_connection() {
    let (peer, port) = start_peer(0);
    let sender = RpcEnv::builder("waiter")
        .client_mode(true)
        .conf(suite_conf().with("rpc.outbox.maxBytes", "256k").unwrap())
        .build()
        .unwrap();
    let r: RpcEndpointRef<String> = sender
        .setup_endpoint_ref(&RpcAddress::new("127.0.0.1", port), "gate")
        .unwrap();
    let payload = "x".repeat(1000);
    // Fill until the outbox stays full: the gate's inbox paused reading, and every buffer on the
    // way (the peer's socket, ours, the connection's write queue) is full.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut full_since: Option<Instant> = None;
    loop {
        assert!(Instant::now() < deadline, "the outbox never stayed full");
        match r.send(payload.clone()) {
            Ok(()) => full_since = None,
            Err(RpcError::QueueFull { .. }) => {
                if full_since.get_or_insert_with(Instant::now).elapsed()
                    > Duration::from_millis(500)
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    let killed = Instant::now();
    let result =
        RpcTimeout::new(Duration::from_secs(2), "test.wake.deadline").await_result(async {
            let mut waiting = std::pin::pin!(r.send_async(payload.clone()));
            let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "send_async waits for room: {first:?}");
            drop(peer); // SIGKILL: the unread bytes make the kernel reset the connection
            Ok(waiting.await)
        });
    let result = result.expect("the waiting send_async returns within 2 s of the reset");
    assert!(
        matches!(result, Err(RpcError::Connection { .. })),
        "{result:?}"
    );
    assert!(killed.elapsed() < Duration::from_secs(2));
    sender.shutdown();
}
