//! The env's side of the network: its server, its client pool, one [`Outbox`] per remote
//! address, and [`RpcEnvHandler`], which turns incoming frames into inbox messages and
//! connections into `on_connected` / `on_disconnected` / `on_network_error` events (Spark's
//! `NettyRpcHandler`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use rpcenv_transport::{
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory, TransportError,
    TransportServer,
};

use crate::address::RpcAddress;
use crate::codec::WireAddress;
use crate::dispatcher::Event;
use crate::env::{DecodeScope, EnvInner};
use crate::error::RpcError;
use crate::outbox::{Outbox, OutboxMessage, Posted};
use crate::reply::{ReplySlot, ReplyValue};

thread_local! {
    /// The last listening address [`Network::known_listen_address`] found: the network, the
    /// connection id, the map's generation then, and the address.
    static LAST_LISTEN: RefCell<Option<(usize, u64, u64, RpcAddress)>> = const { RefCell::new(None) };
}

/// Headroom the frame cap allows above `rpc.message.maxSize` (envelope and frame headers).
pub(crate) const FRAME_HEADROOM: usize = 64 * 1024;

/// Longest wait of a shutdown for the server's connections to finish closing.
const SERVER_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The network of one env.
pub(crate) struct Network {
    runtime: tokio::runtime::Handle,
    factory: TransportClientFactory,
    server: Mutex<Option<TransportServer>>,
    outboxes: Mutex<HashMap<RpcAddress, Arc<Outbox>>>,
    /// Connection id -> the listening address its peer announced as sender.
    listen_addresses: Mutex<HashMap<u64, RpcAddress>>,
    /// Bumped whenever `listen_addresses` changes (invalidates the per-thread cache).
    listen_generation: AtomicU64,
    max_message_size: usize,
    outbox_max_bytes: usize,
    env: Weak<EnvInner>,
    stopped: AtomicBool,
}

impl Network {
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        factory: TransportClientFactory,
        server: Option<TransportServer>,
        max_message_size: usize,
        outbox_max_bytes: usize,
        env: Weak<EnvInner>,
    ) -> Self {
        Network {
            runtime,
            factory,
            server: Mutex::new(server),
            outboxes: Mutex::new(HashMap::new()),
            listen_addresses: Mutex::new(HashMap::new()),
            listen_generation: AtomicU64::new(0),
            max_message_size,
            outbox_max_bytes,
            env,
            stopped: AtomicBool::new(false),
        }
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub(crate) fn factory(&self) -> &TransportClientFactory {
        &self.factory
    }

    /// `rpc.outbox.maxBytes`.
    pub(crate) fn outbox_max_bytes(&self) -> usize {
        self.outbox_max_bytes
    }

    /// Checks a serialized message against `rpc.message.maxSize` before anything is written.
    pub(crate) fn check_size(&self, body: &Bytes) -> Result<(), RpcError> {
        if body.len() > self.max_message_size {
            return Err(RpcError::MessageTooLarge {
                size: body.len(),
                max: self.max_message_size,
            });
        }
        Ok(())
    }

    fn outbox(self: &Arc<Self>, address: &RpcAddress) -> Arc<Outbox> {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        outboxes
            .entry(address.clone())
            .or_insert_with(|| Outbox::open(address.clone(), self))
            .clone()
    }

    /// Sends a message to `address` through its outbox (opened on first use). A message that
    /// does not fit under `rpc.outbox.maxBytes` is handed back with the bytes already waiting.
    pub(crate) fn post(
        self: &Arc<Self>,
        address: &RpcAddress,
        mut message: OutboxMessage,
    ) -> Result<(), (OutboxMessage, usize)> {
        for _attempt in 0..2 {
            if self.stopped.load(Ordering::Acquire) {
                break;
            }
            let outbox = self.outbox(address);
            match outbox.post(message, self) {
                Posted::Done => return Ok(()),
                Posted::Full(m, queued) => return Err((m, queued)),
                Posted::Stale(m) => {
                    // Its connection is gone: drop the outbox so the next one reconnects.
                    self.remove_outbox(&outbox);
                    message = m;
                }
            }
        }
        let error = if self.stopped.load(Ordering::Acquire) {
            RpcError::EnvStopped
        } else {
            RpcError::Connection {
                peer: address.to_string(),
                source: TransportError::ConnectionClosed {
                    peer: SocketAddr::from(([0, 0, 0, 0], address.port())),
                },
            }
        };
        match message {
            OutboxMessage::Rpc(_, slot) => {
                slot.complete(Err(error));
            }
            OutboxMessage::OneWay(_) => {
                tracing::warn!(peer = %address, error = %error, "one-way message not delivered")
            }
        }
        Ok(())
    }

    /// Waits until `need` more bytes fit in the outbox to `address`; fails with the failure of
    /// its connection if that ends meanwhile.
    pub(crate) async fn wait_for_room(
        self: &Arc<Self>,
        address: &RpcAddress,
        need: usize,
    ) -> Result<(), TransportError> {
        let outbox = self.outbox(address);
        outbox.wait_for_room(need, self.outbox_max_bytes).await
    }

    /// Forgets `outbox` if it is still the one registered for its address.
    pub(crate) fn remove_outbox(&self, outbox: &Arc<Outbox>) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        if outboxes
            .get(outbox.address())
            .is_some_and(|o| Arc::ptr_eq(o, outbox))
        {
            outboxes.remove(outbox.address());
        }
    }

    /// The callback that completes an ask's slot with the reply from `client`.
    pub(crate) fn reply_handler(
        &self,
        slot: Arc<ReplySlot>,
        client: &TransportClient,
    ) -> impl FnOnce(Result<Bytes, TransportError>) + Send + 'static {
        let env = self.env.clone();
        let client = client.clone();
        move |result| {
            let outcome = match result {
                Ok(body) => match crate::codec::decode_reply(&body) {
                    Ok(Ok(content)) => Ok(ReplyValue::Remote {
                        content,
                        scope: DecodeScope::new(env, Some(client)),
                    }),
                    Ok(Err(wire)) => Err(wire.into_error(&client.remote_addr().to_string())),
                    Err(e) => Err(RpcError::BadRequest {
                        peer: client.remote_addr().to_string(),
                        message: e.to_string(),
                    }),
                },
                Err(e) => {
                    if env.upgrade().is_none_or(|env| env.is_stopped()) {
                        Err(RpcError::EnvStopped)
                    } else {
                        Err(RpcError::Connection {
                            peer: client.remote_addr().to_string(),
                            source: e,
                        })
                    }
                }
            };
            slot.complete(outcome);
        }
    }

    /// Records the listening address a connection's peer announced; true the first time.
    fn note_listen_address(&self, client: &TransportClient, address: &RpcAddress) -> bool {
        let mut map = self
            .listen_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get(&client.id()) {
            Some(known) if known == address => false,
            _ => {
                map.insert(client.id(), address.clone());
                self.listen_generation.fetch_add(1, Ordering::Release);
                true
            }
        }
    }

    /// The listening address `client`'s peer announced, when it is `wire` and was recorded
    /// already (nothing to note): from a per-thread cache of the last one seen, so that the
    /// messages of a busy connection neither lock the map nor allocate an address.
    fn known_listen_address(
        &self,
        client: &TransportClient,
        wire: WireAddress<'_>,
    ) -> Option<RpcAddress> {
        let generation = self.listen_generation.load(Ordering::Acquire);
        let me = self as *const Network as usize;
        let cached = LAST_LISTEN.with(|last| {
            last.borrow().as_ref().and_then(|(net, id, seen, address)| {
                (*net == me && *id == client.id() && *seen == generation && wire.is(address))
                    .then(|| address.clone())
            })
        });
        if cached.is_some() {
            return cached;
        }
        let known = self
            .listen_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client.id())
            .filter(|known| wire.is(known))
            .cloned()?;
        LAST_LISTEN.with(|last| {
            *last.borrow_mut() = Some((me, client.id(), generation, known.clone()));
        });
        Some(known)
    }

    /// A connection closed: forget its outbox and its peer's listening address.
    fn connection_closed(&self, client: &TransportClient) -> Option<RpcAddress> {
        let stale: Vec<Arc<Outbox>> = {
            let outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
            outboxes
                .values()
                .filter(|o| o.uses(client))
                .cloned()
                .collect()
        };
        for outbox in stale {
            self.remove_outbox(&outbox);
        }
        let removed = self
            .listen_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&client.id());
        self.listen_generation.fetch_add(1, Ordering::Release);
        removed
    }

    fn listen_address_of(&self, client: &TransportClient) -> Option<RpcAddress> {
        self.listen_addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client.id())
            .cloned()
    }

    /// Fails queued messages, closes the server and every connection. After the dispatcher
    /// stopped, so endpoints hear of no disconnection caused by their own shutdown.
    pub(crate) fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        let outboxes: Vec<_> = self
            .outboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, o)| o)
            .collect();
        for outbox in outboxes {
            outbox.close(&|| RpcError::EnvStopped);
        }
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = &server {
            server.close();
        }
        self.factory.close();
        if let Some(server) = server {
            // Shutdown returns once the port is released and every accepted connection is gone
            // (runs on a plain thread: the env starts its shutdown on one).
            let closed = async { tokio::time::timeout(SERVER_CLOSE_WAIT, server.closed()).await };
            if self.runtime.block_on(closed).is_err() {
                tracing::warn!(addr = %server.local_addr(), "the server's connections did not all close within {SERVER_CLOSE_WAIT:?}");
            }
        }
    }
}

/// The transport handler of an env (Spark's `NettyRpcHandler`).
pub(crate) struct RpcEnvHandler {
    env: OnceLock<Weak<EnvInner>>,
}

impl RpcEnvHandler {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(RpcEnvHandler {
            env: OnceLock::new(),
        })
    }

    /// Connects the handler to its env, once the env exists.
    pub(crate) fn bind(&self, env: Weak<EnvInner>) {
        let _ = self.env.set(env);
    }

    fn env(&self) -> Option<Arc<EnvInner>> {
        self.env.get().and_then(Weak::upgrade)
    }
}

fn socket_address(client: &TransportClient) -> RpcAddress {
    RpcAddress::from_socket_addr(client.remote_addr())
}

impl RpcHandler for RpcEnvHandler {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        match self.env() {
            Some(env) => env.deliver(client, message, Some(responder)),
            None => responder.fail("the RpcEnv is not running"),
        }
    }

    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        match self.env() {
            Some(env) => env.deliver(client, message, None),
            None => {
                tracing::warn!(peer = %client.remote_addr(), "one-way message to an RpcEnv that is not running dropped")
            }
        }
    }

    fn channel_active(&self, client: &TransportClient) {
        if let Some(env) = self.env() {
            env.post_to_all(Event::Connected(socket_address(client)));
        }
    }

    fn channel_inactive(&self, client: &TransportClient) {
        let Some(env) = self.env() else { return };
        let listen = env.network().connection_closed(client);
        env.post_to_all(Event::Disconnected(socket_address(client)));
        if let Some(listen) = listen {
            env.post_to_all(Event::Disconnected(listen));
        }
    }

    fn exception_caught(&self, error: &TransportError, client: &TransportClient) {
        let Some(env) = self.env() else { return };
        let cause = Arc::new(RpcError::Connection {
            peer: client.remote_addr().to_string(),
            source: error.clone(),
        });
        env.post_to_all(Event::NetworkError(cause.clone(), socket_address(client)));
        if let Some(listen) = env.network().listen_address_of(client) {
            env.post_to_all(Event::NetworkError(cause, listen));
        }
    }
}

impl EnvInner {
    /// An incoming request or one-way message: decode the envelope and post it to the named
    /// endpoint's inbox (the content is decoded by the inbox, which knows its type).
    fn deliver(
        self: &Arc<Self>,
        client: &TransportClient,
        message: Bytes,
        responder: Option<RpcResponder>,
    ) {
        let envelope = match crate::codec::decode_request(&message) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(peer = %client.remote_addr(), error = %e, "undecodable request");
                if let Some(r) = responder {
                    r.respond(crate::codec::encode_reply_error(
                        &crate::codec::WireError::BadRequest {
                            message: e.to_string(),
                        },
                    ));
                }
                return;
            }
        };
        let sender = match envelope.sender {
            Some(wire) => match self.network().known_listen_address(client, wire) {
                Some(known) => known,
                None => {
                    let listen = wire.to_address();
                    if self.network().note_listen_address(client, &listen) {
                        self.post_to_all(Event::Connected(listen.clone()));
                    }
                    listen
                }
            },
            // A client-mode peer: its socket address stands for it (F42).
            None => socket_address(client),
        };
        let scope = DecodeScope::new(Arc::downgrade(self), Some(client.clone()));
        // Large byte payloads (`Blob`s) in the content share `message` instead of copying it.
        crate::codec::with_source(&message, || {
            self.post_remote(envelope.name, envelope.content, sender, responder, scope)
        });
    }
}
