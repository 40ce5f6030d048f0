//! Connection events: `on_connected`, `on_disconnected` and `on_network_error` for socket and
//! listening addresses, unreachable peers, and a peer process killed mid-ask or while a sender
//! waits for room to send to it.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::future::Future;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::task::Poll;
use std::time::{Duration, Instant};

use rpcenv::{
    EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcError, RpcTimeout,
};

mod common;
use common::{client, server, suite_conf, Echo, Forward, Hoarder, WAIT};

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

/// Spark: RpcEnvSuite "network events in sever RpcEnv when another RpcEnv is in server mode".
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

/// Spark: RpcEnvSuite "network events in sever RpcEnv when another RpcEnv is in client mode".
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

/// Spark: RpcEnvSuite "network events in client RpcEnv when another RpcEnv is in server mode".
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
    // Its inbox fills and pauses the connections that feed it.
    env.setup_endpoint("stuck", Stuck).unwrap();
    println!("PEER-PORT {}", env.address().unwrap().port());
    // Serve until killed, or until the parent goes away (stdin closes).
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// Blocks its message loop on every message (for up to a minute): a peer that stops reading.
struct Stuck;

impl RpcEndpoint for Stuck {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
        let (_never, wait) = channel::<()>();
        let _ = wait.recv_timeout(Duration::from_secs(60));
        Ok(())
    }
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
        .setup_endpoint_ref(&RpcAddress::new("127.0.0.1", port), "stuck")
        .unwrap();
    let payload = "x".repeat(1000);
    // Fill until the outbox stays full: the stuck endpoint's inbox exhausted its connection's
    // byte budget (the peer stopped reading), and every buffer on the way (the peer's socket,
    // ours, the connection's write queue) is full.
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

/// A raw peer: one transport connection to `server`, over which it asks the endpoint `name`
/// with envelopes announcing the sender addresses it chooses, then closes. Returns the
/// connection's own address (the socket address the server's events name).
fn ask_announcing(server: &RpcAddress, name: &str, senders: &[RpcAddress]) -> std::net::SocketAddr {
    use rpcenv_transport::{NoOpRpcHandler, TransportClientFactory, TransportConf};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let factory = TransportClientFactory::new(
            TransportConf::default(),
            std::sync::Arc::new(NoOpRpcHandler),
        );
        let client = factory
            .create_client(server.host(), server.port())
            .await
            .unwrap();
        for sender in senders {
            let body = rpcenv::codec::bench::encode_envelope(
                Some(sender),
                Some(server),
                name,
                &"hi".to_string(),
            )
            .unwrap();
            let reply = tokio::time::timeout(WAIT, client.send_rpc(body))
                .await
                .expect("an answer in time")
                .expect("an answer");
            // The answer names the sender this very message announced (not the first one).
            let (announced, _): (Option<RpcAddress>, Option<std::net::SocketAddr>) =
                rpcenv::codec::bench::decode_reply_value(&reply).unwrap();
            assert_eq!(announced.as_ref(), Some(sender));
        }
        let local = client.local_addr();
        client.close();
        let _ = tokio::time::timeout(WAIT, client.closed()).await;
        factory.close();
        local
    })
}

/// End to end, over real connections: a peer alternating its announced sender address raises
/// one `Connected` for its connection (and for the first address it announced) and, when it
/// closes, one `Disconnected` per address announced on it; an address it claimed that another
/// open connection announces (a live env's own address) is not disconnected by that close.
///
/// Plain connections whatever `RPCENV_SUITE_CONF` says: the raw peer speaks no TLS.
#[test]
fn a_peer_alternating_its_sender_address_connects_once_and_disconnects_each_address() {
    let env = RpcEnv::builder("server")
        .conf(rpcenv::RpcConf::new())
        .build()
        .unwrap();
    let (tx, rx) = channel();
    env.setup_endpoint("events", EventRecorder(tx)).unwrap();
    let at = env.address().unwrap().clone();
    // The real owner of an address: a server-mode env that announces its own.
    let owner = RpcEnv::builder("owner")
        .conf(rpcenv::RpcConf::new())
        .build()
        .unwrap();
    let owned = owner.address().unwrap().clone();
    let from_owner: RpcEndpointRef<String> = owner.setup_endpoint_ref(&at, "events").unwrap();
    let wait = RpcTimeout::new(WAIT, "test.wait");
    from_owner
        .ask_sync_with_timeout::<(Option<RpcAddress>, Option<std::net::SocketAddr>)>(
            "owner".into(),
            wait.clone(),
        )
        .unwrap();
    expect_event(&rx, "Connected(owner)", |e| {
        *e == NetEvent::Connected(owned.clone())
    });
    while rx.try_recv().is_ok() {}

    let (x, y) = (
        RpcAddress::new("10.0.0.1", 7001),
        RpcAddress::new("10.0.0.2", 7002),
    );
    let mut senders = Vec::new();
    for _ in 0..10 {
        senders.push(x.clone());
        senders.push(y.clone());
    }
    senders.push(owned.clone());
    senders.push(x.clone());
    let raw = RpcAddress::from_socket_addr(ask_announcing(&at, "events", &senders));
    // Every event up to the close's `Disconnected`s (the close posts them one after another,
    // and a later ask's answer may overtake the rest of them while the first is seen), then
    // whatever else it raised (posted by then, so delivered before the answer to a later ask).
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    let closed = [
        NetEvent::Disconnected(raw.clone()),
        NetEvent::Disconnected(x.clone()),
        NetEvent::Disconnected(y.clone()),
    ];
    while !closed.iter().all(|e| events.contains(e)) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("not every {closed:?} within {WAIT:?}; saw {events:?}"));
        if let Ok(e) = rx.recv_timeout(left) {
            events.push(e);
        }
    }
    from_owner
        .ask_sync_with_timeout::<(Option<RpcAddress>, Option<std::net::SocketAddr>)>(
            "owner".into(),
            wait,
        )
        .unwrap();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    let count = |e: NetEvent| events.iter().filter(|&seen| *seen == e).count();
    assert_eq!(count(NetEvent::Connected(raw.clone())), 1, "{events:?}");
    assert_eq!(count(NetEvent::Connected(x.clone())), 1, "{events:?}");
    assert_eq!(count(NetEvent::Connected(y.clone())), 0, "{events:?}");
    assert_eq!(count(NetEvent::Connected(owned.clone())), 0, "{events:?}");
    assert_eq!(count(NetEvent::Disconnected(raw.clone())), 1, "{events:?}");
    assert_eq!(count(NetEvent::Disconnected(x.clone())), 1, "{events:?}");
    assert_eq!(count(NetEvent::Disconnected(y.clone())), 1, "{events:?}");
    assert_eq!(
        count(NetEvent::Disconnected(owned.clone())),
        0,
        "the claimed address's owner is still connected: {events:?}"
    );
    let connected = events
        .iter()
        .filter(|e| matches!(e, NetEvent::Connected(_)))
        .count();
    assert_eq!(
        connected, 2,
        "one per connection and its first address: {events:?}"
    );
    // The owner's own close does disconnect it.
    owner.shutdown();
    owner.await_termination().unwrap();
    expect_event(&rx, "Disconnected(owner)", |e| {
        *e == NetEvent::Disconnected(owned.clone())
    });
    env.shutdown();
}
