//! The env's side of the network: its server, its client pool, one [`Outbox`] per remote
//! address, and [`RpcEnvHandler`], which turns incoming frames into inbox messages and
//! connections into `on_connected` / `on_disconnected` / `on_network_error` events (Spark's
//! `NettyRpcHandler`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use rpcenv_transport::{
    Body, ReplyBody, RpcHandler, RpcResponder, TransportClient, TransportClientFactory,
    TransportError, TransportServer,
};

use crate::address::{RpcAddress, RpcEndpointAddress};
use crate::announced::Announced;
use crate::call_context::{ReplyTarget, RpcCallContext};
use crate::codec::{decode_request, encode_reply_error, WireAddress, WireError};
use crate::decode_scope::DecodeScope;
use crate::dispatcher::Dispatcher;
use crate::endpoint_ref::{OutboxMessage, RefNetwork, Refused, Waiting};
use crate::error::RpcError;
use crate::file_server::FileRegistry;
use crate::mailbox::Event;
use crate::outbox::{admits, dispatch, Outbox, OutboxContext, Posted};
use crate::stats::PeerStats;
use crate::stream_service::StreamService;

/// Headroom the frame cap allows above `rpc.message.maxSize` (envelope and frame headers).
pub(crate) const FRAME_HEADROOM: usize = 64 * 1024;

/// The network of one env.
pub(crate) struct Network {
    /// This network, for the outboxes it opens to call back.
    me: Weak<Network>,
    /// The env's name, for logs.
    name: String,
    /// The env's dispatcher: where incoming messages and connection events go.
    dispatcher: Arc<Dispatcher>,
    cx: Arc<OutboxContext>,
    server: Mutex<Option<TransportServer>>,
    /// Looked up for every message sent to a peer (hence a fast hash: the keys are the
    /// addresses this env sends to, not chosen by a peer).
    outboxes: Mutex<HashMap<RpcAddress, Arc<Outbox>>>,
    /// The listening addresses peers announced on their connections.
    announced: Announced,
    max_message_size: usize,
    /// Streams and uploads served for the env's endpoints.
    streams: StreamService,
    stopped: AtomicBool,
}

/// Longest wait of a shutdown for the server's connections to finish closing.
const SERVER_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The parts a [`Network`] is built from.
pub(crate) struct NetworkParts {
    pub(crate) name: String,
    /// The env's span: the parent of the connections its outboxes open.
    pub(crate) span: tracing::Span,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) factory: TransportClientFactory,
    pub(crate) server: Option<TransportServer>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// `rpc.message.maxSize`.
    pub(crate) max_message_size: usize,
    /// `rpc.outbox.maxBytes`.
    pub(crate) outbox_max_bytes: usize,
    /// Streams and uploads served for the env's endpoints.
    pub(crate) streams: StreamService,
}

impl Network {
    /// The network; `me` is the weak handle of the `Arc` it is being built into.
    pub(crate) fn new(parts: NetworkParts, me: Weak<Network>) -> Self {
        Network {
            me,
            name: parts.name,
            cx: Arc::new(OutboxContext {
                runtime: parts.runtime,
                factory: parts.factory,
                max_bytes: parts.outbox_max_bytes,
                span: parts.span,
                dispatcher: Arc::downgrade(&parts.dispatcher),
            }),
            dispatcher: parts.dispatcher,
            server: Mutex::new(parts.server),
            outboxes: Mutex::new(HashMap::new()),
            announced: Announced::default(),
            max_message_size: parts.max_message_size,
            streams: parts.streams,
            stopped: AtomicBool::new(false),
        }
    }

    /// The env's dispatcher.
    pub(crate) fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Streams and uploads served for the env's endpoints.
    pub(crate) fn streams(&self) -> &StreamService {
        &self.streams
    }

    /// `rpc.message.maxSize`.
    pub(crate) fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// A pooled connection to `address` (the one its outbox uses: one connection per peer), for
    /// chunk fetches, stream reads and uploads.
    /// The connect runs on the env's runtime, so that this may be awaited anywhere.
    pub(crate) async fn client_to(
        &self,
        address: &RpcAddress,
    ) -> Result<TransportClient, RpcError> {
        let factory = self.cx.factory.clone();
        let host = address.host().trim_matches(['[', ']']).to_string();
        let port = address.port();
        let connect = self
            .cx
            .runtime
            .spawn(async move { factory.create_client(&host, port).await });
        let source = match connect.await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => e,
            Err(join) => TransportError::ConnectFailed {
                addr: address.to_string(),
                source: Arc::new(std::io::Error::other(join.to_string())),
            },
        };
        Err(RpcError::Connection {
            peer: address.to_string(),
            source,
        })
    }

    fn outbox(&self, address: &RpcAddress) -> Arc<Outbox> {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        outboxes
            .entry(address.clone())
            .or_insert_with(|| {
                let net = self.me.clone();
                Outbox::open(address.clone(), &self.cx, move |outbox| {
                    if let Some(net) = net.upgrade() {
                        net.remove_outbox(outbox, "connect_failed");
                    }
                })
            })
            .clone()
    }

    /// Sends a message to `address` through its outbox (opened on first use). A message that
    /// does not fit under `rpc.outbox.maxBytes` is handed back with the bytes already waiting.
    fn post(&self, address: &RpcAddress, mut message: OutboxMessage) -> Result<(), Refused> {
        let mut failure = None;
        for _attempt in 0..2 {
            if self.stopped.load(Ordering::Acquire) {
                break;
            }
            let outbox = self.outbox(address);
            match outbox.post(message, &self.cx) {
                Posted::Done => return Ok(()),
                Posted::Full(m, queued) => return Err(Refused::Full(m, queued)),
                Posted::Stale(m) => {
                    // Its connection is gone: drop the outbox so the next one reconnects,
                    // unless it never connected: then the message fails with that cause (a
                    // second connect would only be refused by the fast-fail window).
                    self.remove_outbox(&outbox, "connection_lost");
                    message = m;
                    if let Some(cause) = outbox.failure() {
                        failure = Some(cause.clone());
                        break;
                    }
                }
            }
        }
        let error = if self.stopped.load(Ordering::Acquire) {
            RpcError::EnvStopped
        } else {
            // The cause of the last failed connect (an authentication failure, say), else what
            // happened, naming the peer as addressed.
            RpcError::Connection {
                peer: address.to_string(),
                source: failure.unwrap_or_else(|| TransportError::ConnectFailed {
                    addr: address.to_string(),
                    source: Arc::new(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the connection closed twice while the message was being posted",
                    )),
                }),
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

    /// Forgets `outbox` if it is still the one registered for its address; `cause` labels the
    /// close in the metrics (`rpcenv_peer_closes_total`).
    pub(crate) fn remove_outbox(&self, outbox: &Arc<Outbox>, cause: &'static str) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        if outboxes
            .get(outbox.address())
            .is_some_and(|o| Arc::ptr_eq(o, outbox))
        {
            outboxes.remove(outbox.address());
            outbox.metrics().closed(cause);
        }
    }

    /// Snapshots of the outboxes (by address) and the number of connections the server
    /// accepted that are open.
    pub(crate) fn peer_stats(&self) -> (Vec<PeerStats>, usize) {
        let outboxes: Vec<Arc<Outbox>> = self
            .outboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut peers: Vec<PeerStats> = outboxes
            .iter()
            .map(|o| {
                let (outbox_bytes, connected) = o.queued();
                PeerStats {
                    address: o.address().to_string(),
                    outbox_bytes,
                    connected,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.address.cmp(&b.address));
        let accepted = self
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |s| {
                s.connections().iter().filter(|c| c.is_active()).count()
            });
        (peers, accepted)
    }

    /// A connection closed: forget its outbox and the listening addresses its peer announced;
    /// returns those that disconnect (see `announced`).
    fn connection_closed(&self, client: &TransportClient) -> Vec<RpcAddress> {
        let stale: Vec<Arc<Outbox>> = {
            let outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
            outboxes
                .values()
                .filter(|o| o.uses(client))
                .cloned()
                .collect()
        };
        for outbox in stale {
            self.remove_outbox(&outbox, "connection_lost");
        }
        self.announced.closed(client.id())
    }

    fn listen_address_of(&self, client: &TransportClient) -> Option<RpcAddress> {
        self.announced.current(client.id())
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
            outbox.metrics().closed("shutdown");
            outbox.close(&|| RpcError::EnvStopped);
        }
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(server) = &server {
            server.close();
        }
        self.cx.factory.close();
        if let Some(server) = server {
            // Shutdown returns once the port is released and every accepted connection is gone
            // (this runs on a plain thread: the env starts its shutdown on one).
            let closed = async { tokio::time::timeout(SERVER_CLOSE_WAIT, server.closed()).await };
            if self.cx.runtime.block_on(closed).is_err() {
                tracing::warn!(addr = %server.local_addr(), "the server's connections did not all close within {SERVER_CLOSE_WAIT:?}");
            }
        }
    }
}

impl RefNetwork for Network {
    fn check_size(&self, body: &Body) -> Result<(), RpcError> {
        if body.len() > self.max_message_size {
            return Err(RpcError::MessageTooLarge {
                size: body.len(),
                max: self.max_message_size,
            });
        }
        Ok(())
    }

    fn outbox_max_bytes(&self) -> usize {
        self.cx.max_bytes
    }

    fn post_to(&self, address: &RpcAddress, message: OutboxMessage) -> Result<(), Refused> {
        self.post(address, message)
    }

    fn post_over(&self, client: &TransportClient, message: OutboxMessage) -> Result<(), Refused> {
        if !client.is_active() {
            return Err(Refused::Failed(RpcError::Connection {
                peer: client.remote_addr().to_string(),
                source: TransportError::ConnectionClosed {
                    peer: client.remote_addr(),
                },
            }));
        }
        let queued = client.queued_bytes();
        if !admits(queued, message.len(), self.cx.max_bytes) {
            return Err(Refused::Full(message, queued));
        }
        dispatch(client, message, &self.cx);
        Ok(())
    }

    fn room_at<'a>(&'a self, address: &'a RpcAddress, need: usize) -> Waiting<'a> {
        let outbox = self.outbox(address);
        let max = self.cx.max_bytes;
        Box::pin(async move {
            outbox
                .wait_for_room(need, max)
                .await
                .map_err(|source| RpcError::Connection {
                    peer: address.to_string(),
                    source,
                })
        })
    }

    fn room_over<'a>(&'a self, client: &'a TransportClient, need: usize) -> Waiting<'a> {
        let limit = self.cx.max_bytes.saturating_sub(need);
        Box::pin(async move {
            client
                .wait_queued_at_most(limit)
                .await
                .map_err(|source| RpcError::Connection {
                    peer: client.remote_addr().to_string(),
                    source,
                })
        })
    }
}

/// Whether an envelope naming `receiver` is for the env whose address is `own` (see
/// `Network::addressed_here`).
fn addressed_to(receiver: Option<WireAddress<'_>>, own: Option<&RpcAddress>) -> bool {
    match (receiver, own) {
        (None, None) | (Some(_), Some(_)) => true,
        (None, Some(_)) | (Some(_), None) => false,
    }
}

/// The transport handler of an env (Spark's `NettyRpcHandler`).
pub(crate) struct RpcEnvHandler {
    network: OnceLock<Weak<Network>>,
    /// The env's file server: answers stream ids that start with `/`.
    files: Arc<FileRegistry>,
}

impl RpcEnvHandler {
    pub(crate) fn new(files: Arc<FileRegistry>) -> Arc<Self> {
        Arc::new(RpcEnvHandler {
            network: OnceLock::new(),
            files,
        })
    }

    /// Connects the handler to its env's network, once that exists.
    pub(crate) fn bind(&self, network: Weak<Network>) {
        let _ = self.network.set(network);
    }

    fn network(&self) -> Option<Arc<Network>> {
        self.network.get().and_then(Weak::upgrade)
    }
}

fn socket_address(client: &TransportClient) -> RpcAddress {
    RpcAddress::from_socket_addr(client.remote_addr())
}

impl RpcHandler for RpcEnvHandler {
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder) {
        match self.network() {
            Some(net) => net.deliver(client, message, Some(responder)),
            None => responder.fail("the RpcEnv is not running"),
        }
    }

    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        match self.network() {
            Some(net) => net.deliver(client, message, None),
            None => {
                tracing::warn!(peer = %client.remote_addr(), "one-way message to an RpcEnv that is not running dropped")
            }
        }
    }

    /// A stream id starting with `/` names a served file (`/files/..`, `/jars/..`, a
    /// directory's); any other names a chunk of a stream an endpoint registered
    /// (`"<id>_<index>"`). Only authenticated connections get here: with authentication on, the
    /// server's bootstrap completes before any request is handled.
    fn open_stream_body(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ReplyBody, String> {
        if stream_id.starts_with('/') {
            return self.files.open(stream_id);
        }
        match self.network() {
            Some(net) => net.streams.stream(client, stream_id),
            None => Err("the RpcEnv is not running".to_string()),
        }
    }

    fn get_chunk_body(
        &self,
        client: &TransportClient,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<ReplyBody, String> {
        match self.network() {
            Some(net) => net.streams.chunk(client, stream_id, chunk_index),
            None => Err("the RpcEnv is not running".to_string()),
        }
    }

    fn receive_stream(
        &self,
        client: &TransportClient,
        meta: Bytes,
        body: Bytes,
        responder: RpcResponder,
    ) {
        match self.network() {
            Some(net) => net.streams.upload(client, meta, body, responder),
            None => responder.fail("the RpcEnv is not running"),
        }
    }

    fn channel_active(&self, client: &TransportClient) {
        if let Some(net) = self.network() {
            net.streams.connection_active(client);
            net.dispatcher
                .post_to_all(Event::Connected(socket_address(client)));
        }
    }

    fn channel_inactive(&self, client: &TransportClient) {
        let Some(net) = self.network() else { return };
        net.streams.connection_closed(client);
        let listen = net.connection_closed(client);
        net.dispatcher
            .post_to_all(Event::Disconnected(socket_address(client)));
        for listen in listen {
            net.dispatcher.post_to_all(Event::Disconnected(listen));
        }
    }

    fn exception_caught(&self, error: &TransportError, client: &TransportClient) {
        let Some(net) = self.network() else { return };
        let cause = Arc::new(RpcError::Connection {
            peer: client.remote_addr().to_string(),
            source: error.clone(),
        });
        net.dispatcher
            .post_to_all(Event::NetworkError(cause.clone(), socket_address(client)));
        if let Some(listen) = net.listen_address_of(client) {
            net.dispatcher
                .post_to_all(Event::NetworkError(cause, listen));
        }
    }
}

impl Network {
    /// An incoming request or one-way message: decode the envelope and post it to the named
    /// endpoint's inbox (the content is decoded by the inbox, which knows its type).
    fn deliver(&self, client: &TransportClient, message: Bytes, responder: Option<RpcResponder>) {
        let envelope = match decode_request(&message) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(peer = %client.remote_addr(), error = %e, "undecodable request");
                if let Some(r) = responder {
                    r.respond(encode_reply_error(&WireError::BadRequest {
                        message: e.to_string(),
                    }));
                }
                return;
            }
        };
        if !self.addressed_here(envelope.receiver) {
            let requested = RpcEndpointAddress::new(
                envelope.receiver.map(WireAddress::to_address),
                envelope.name,
            );
            tracing::warn!(env = %self.name, peer = %client.remote_addr(), endpoint = %requested, "message for another env refused");
            if let Some(r) = responder {
                r.respond(encode_reply_error(&WireError::EndpointNotFound {
                    uri: requested.to_string(),
                }));
            }
            return;
        }
        let sender = match envelope.sender {
            Some(wire) => match self.announced.known(client.id(), wire) {
                Some(known) => known,
                None => {
                    let listen = wire.to_address();
                    if self.announced.note(client.id(), &listen) {
                        self.dispatcher
                            .post_to_all(Event::Connected(listen.clone()));
                    }
                    listen
                }
            },
            // A client-mode peer has no listening address: its socket address stands for it.
            None => socket_address(client),
        };
        // Large byte payloads (`Blob`s) in the content share `message` instead of copying it.
        let env: Weak<Dispatcher> = Arc::downgrade(&self.dispatcher);
        let scope = DecodeScope::new(env, Some(client.clone())).with_source(message.clone());
        self.post_remote(envelope.name, envelope.content, sender, responder, scope);
    }

    /// Whether a message whose envelope names `receiver` is for this env, so that a message meant
    /// for another env is never handed to a local endpoint that merely has the same name. An
    /// address-less receiver is an endpoint of a client-mode env, reached over the connection
    /// that env opened: this env, only if it is in client mode itself; an addressed one is for a
    /// server-mode env. The address itself is not compared with ours: the sender names the
    /// address it connected to, which may be a DNS alias, a port forward, a NAT or a proxy in
    /// front of this env, and it reached this env over that very connection.
    fn addressed_here(&self, receiver: Option<WireAddress<'_>>) -> bool {
        addressed_to(receiver, self.dispatcher.defaults().sender.as_ref())
    }

    /// Posts a message that came over the network to the endpoint called `name`.
    fn post_remote(
        &self,
        name: &str,
        content: &[u8],
        sender: RpcAddress,
        responder: Option<RpcResponder>,
        scope: DecodeScope,
    ) {
        let reply = |r: RpcResponder, endpoint: Arc<str>| {
            let ctx = RpcCallContext::new(ReplyTarget::Remote(r), Some(sender), endpoint);
            match scope.client() {
                Some(client) => ctx
                    .with_connection(client.remote_addr())
                    .with_client(client.clone()),
                None => ctx,
            }
        };
        match self.dispatcher.control(name) {
            Some(inbox) => {
                let ctx = responder.map(|r| reply(r, inbox.endpoint_name()));
                inbox.post_remote(content, ctx, scope)
            }
            None => {
                let error = if self.dispatcher.is_stopped() {
                    RpcError::EnvStopped
                } else {
                    RpcError::EndpointNotFound {
                        uri: self.dispatcher.endpoint_address(name).to_string(),
                    }
                };
                match responder {
                    Some(r) => reply(r, name.into()).fail(error),
                    None => {
                        tracing::warn!(env = %self.name, peer = %scope.peer(), error = %error, "one-way message not delivered")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_for_this_env_are_delivered() {
        let own = RpcAddress::new("127.0.0.1", 4000);
        let wire = |host, port| Some(WireAddress { host, port });
        assert!(addressed_to(wire("127.0.0.1", 4000), Some(&own)));
        assert!(
            addressed_to(wire("localhost", 4000), Some(&own)),
            "a host alias"
        );
        assert!(
            addressed_to(wire("10.0.0.7", 80), Some(&own)),
            "the address of a proxy or port forward in front of this env"
        );
        // An address-less receiver is a client-mode endpoint: only a client-mode env has it.
        assert!(!addressed_to(None, Some(&own)));
        assert!(addressed_to(None, None));
        assert!(!addressed_to(wire("127.0.0.1", 4000), None));
    }
}
