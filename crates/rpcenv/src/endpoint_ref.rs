//! [`RpcEndpointRef`]: a typed handle to an endpoint, local or remote, through which messages are
//! sent and asks made.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use rpcenv_transport::{TransportClient, TransportError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::{RpcAddress, RpcEndpointAddress};
use crate::call_context::{ReplyTarget, RpcCallContext};
use crate::codec::encode_request;
use crate::dispatcher::InboxControl;
use crate::env::EnvInner;
use crate::error::RpcError;
use crate::inbox::{Behaviour, Inbox, InboxMessage};
use crate::message::{RpcMessage, RpcReply};
use crate::net::Network;
use crate::outbox::{dispatch, OutboxMessage};
use crate::reply::{Ask, ReplySlot};
use crate::timeout::{ensure_blocking_allowed, RpcTimeout};

/// An inbox seen through its message type.
pub(crate) trait Mailbox<M>: Send + Sync {
    fn post(&self, message: InboxMessage<M>) -> Result<(), InboxMessage<M>>;
    fn refusal(&self) -> RpcError;
    fn control(&self) -> &dyn InboxControl;
}

impl<B: Behaviour> Mailbox<B::Message> for Inbox<B> {
    fn post(&self, message: InboxMessage<B::Message>) -> Result<(), InboxMessage<B::Message>> {
        Inbox::post(self, message)
    }

    fn refusal(&self) -> RpcError {
        Inbox::refusal(self)
    }

    fn control(&self) -> &dyn InboxControl {
        self
    }
}

/// What the refs of one env share: defaults and the runtime.
pub(crate) struct RefDefaults {
    pub(crate) ask_timeout: RpcTimeout,
    pub(crate) num_retries: u32,
    pub(crate) retry_wait: Duration,
    pub(crate) runtime: tokio::runtime::Handle,
    /// The address of the env the refs belong to (the sender of their messages).
    pub(crate) sender: Option<RpcAddress>,
    /// The env, for its network.
    pub(crate) env: Weak<EnvInner>,
}

pub(crate) enum Target<M> {
    Local(Arc<dyn Mailbox<M>>),
    /// Another env's endpoint: through the outbox of its address, or, for an endpoint of a
    /// client-mode env, over the connection that env opened.
    Remote {
        client: Option<TransportClient>,
    },
}

struct RefInner<M> {
    address: Arc<RpcEndpointAddress>,
    /// What timeout errors name: the address, or for a ref bound to a connection, the peer.
    described: Arc<RpcEndpointAddress>,
    name: Arc<str>,
    target: Target<M>,
    defaults: Arc<RefDefaults>,
}

/// A handle to an endpoint whose messages are of type `M`.
///
/// Cheap to clone, `Send + Sync`, and serializable: a ref inside a message travels as the
/// endpoint's address and works on arrival. Two refs are equal when they name the same endpoint
/// address.
///
/// ```
/// use rpcenv::{EndpointCtx, HandlerResult, RpcEndpoint, RpcEnv};
///
/// struct Log(Vec<String>);
/// impl RpcEndpoint for Log {
///     type Message = String;
///     fn receive(&mut self, _: &EndpointCtx<String>, line: String) -> HandlerResult {
///         self.0.push(line);
///         Ok(())
///     }
/// }
///
/// let env = RpcEnv::builder("doc").client_mode(true).build()?;
/// let log = env.setup_endpoint("log", Log(Vec::new()))?;
/// log.send("started".to_string())?;
/// assert_eq!(log.to_string(), "RpcEndpointRef(rpc-client://log)");
/// env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
pub struct RpcEndpointRef<M> {
    inner: Arc<RefInner<M>>,
}

impl<M> Clone for RpcEndpointRef<M> {
    fn clone(&self) -> Self {
        RpcEndpointRef {
            inner: self.inner.clone(),
        }
    }
}

impl<M: RpcMessage> RpcEndpointRef<M> {
    pub(crate) fn local(
        address: RpcEndpointAddress,
        mailbox: Arc<dyn Mailbox<M>>,
        defaults: Arc<RefDefaults>,
    ) -> Self {
        let name: Arc<str> = address.name().into();
        let address = Arc::new(address);
        RpcEndpointRef {
            inner: Arc::new(RefInner {
                described: address.clone(),
                address,
                name,
                target: Target::Local(mailbox),
                defaults,
            }),
        }
    }

    pub(crate) fn remote(
        address: RpcEndpointAddress,
        client: Option<TransportClient>,
        defaults: Arc<RefDefaults>,
    ) -> Self {
        let name: Arc<str> = address.name().into();
        let described = match (&client, address.address()) {
            (Some(c), None) => Arc::new(RpcEndpointAddress::new(
                Some(RpcAddress::from_socket_addr(c.remote_addr())),
                address.name(),
            )),
            _ => Arc::new(address.clone()),
        };
        RpcEndpointRef {
            inner: Arc::new(RefInner {
                address: Arc::new(address),
                described,
                name,
                target: Target::Remote { client },
                defaults,
            }),
        }
    }

    /// The network of the ref's env, or why there is none.
    fn network(&self) -> Result<Arc<Network>, RpcError> {
        self.inner
            .defaults
            .env
            .upgrade()
            .filter(|env| !env.is_stopped())
            .map(|env| env.network().clone())
            .ok_or(RpcError::EnvStopped)
    }

    /// Serializes `message` in an envelope for the remote endpoint.
    fn envelope(&self, message: &M, net: &Network) -> Result<Bytes, RpcError> {
        let body = encode_request(
            self.inner.defaults.sender.as_ref(),
            self.inner.address.address(),
            &self.inner.name,
            message,
        )
        .map_err(|e| RpcError::Serialization {
            endpoint: self.inner.address.to_string(),
            message: e,
        })?;
        net.check_size(&body)?;
        Ok(body)
    }

    /// Hands a serialized message to its route: the connection a client-mode endpoint is reached
    /// over, or the outbox of the endpoint's address. A message that does not fit under
    /// `rpc.outbox.maxBytes` is handed back with the bytes already waiting.
    fn post(
        &self,
        client: Option<&TransportClient>,
        message: OutboxMessage,
        net: &Arc<Network>,
    ) -> Result<Result<(), (OutboxMessage, usize)>, RpcError> {
        match (client, self.inner.address.address()) {
            (Some(c), _) => {
                if !c.is_active() {
                    return Err(RpcError::Connection {
                        peer: c.remote_addr().to_string(),
                        source: TransportError::ConnectionClosed {
                            peer: c.remote_addr(),
                        },
                    });
                }
                let queued = c.queued_bytes();
                if queued > 0 && queued + message_len(&message) > net.outbox_max_bytes() {
                    return Ok(Err((message, queued)));
                }
                dispatch(c, message, net);
                Ok(Ok(()))
            }
            (None, Some(address)) => Ok(net.post(address, message)),
            (None, None) => Err(RpcError::ClientEndpointUnreachable {
                uri: self.inner.address.to_string(),
            }),
        }
    }

    fn queue_full(
        &self,
        client: Option<&TransportClient>,
        queued: usize,
        net: &Network,
    ) -> RpcError {
        RpcError::QueueFull {
            peer: client.map_or_else(
                || self.inner.address.to_string(),
                |c| c.remote_addr().to_string(),
            ),
            queued,
            max: net.outbox_max_bytes(),
        }
    }

    /// Sends a one-way message, waiting while more than `rpc.outbox.maxBytes` wait to be sent
    /// to the endpoint instead of failing with [`RpcError::QueueFull`]. For a local endpoint it
    /// is [`send`](Self::send).
    pub async fn send_async(&self, message: M) -> Result<(), RpcError> {
        let Target::Remote { client } = &self.inner.target else {
            return self.send(message);
        };
        let net = self.network()?;
        let mut pending = OutboxMessage::OneWay(self.envelope(&message, &net)?);
        loop {
            match self.post(client.as_ref(), pending, &net)? {
                Ok(()) => return Ok(()),
                Err((back, _)) => {
                    let need = message_len(&back);
                    match (client, self.inner.address.address()) {
                        (Some(c), _) => {
                            let room = net.outbox_max_bytes().saturating_sub(need);
                            c.wait_queued_at_most(room).await.map_err(|source| {
                                RpcError::Connection {
                                    peer: c.remote_addr().to_string(),
                                    source,
                                }
                            })?
                        }
                        (None, Some(address)) => {
                            net.wait_for_room(address, need).await.map_err(|source| {
                                RpcError::Connection {
                                    peer: address.to_string(),
                                    source,
                                }
                            })?
                        }
                        (None, None) => {
                            return Err(RpcError::ClientEndpointUnreachable {
                                uri: self.inner.address.to_string(),
                            })
                        }
                    }
                    pending = back;
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn local_for_tests(mailbox: Arc<dyn Mailbox<M>>) -> Self {
        let defaults = Arc::new(RefDefaults {
            ask_timeout: RpcTimeout::new(Duration::from_secs(120), "rpc.askTimeout"),
            num_retries: 3,
            retry_wait: Duration::from_secs(3),
            runtime: crate::runtime::shared_runtime(1),
            sender: None,
            env: Weak::new(),
        });
        Self::local(RpcEndpointAddress::new(None, "test"), mailbox, defaults)
    }

    /// Sends a one-way message. Returns once it is queued; the endpoint's `receive` handles it.
    ///
    /// Fails at once (the message is not delivered) when the endpoint is stopped
    /// ([`RpcError::EndpointStopped`]) or its env is ([`RpcError::EnvStopped`]), when the
    /// message exceeds `rpc.message.maxSize` ([`RpcError::MessageTooLarge`]), or when more than
    /// `rpc.outbox.maxBytes` wait to be sent to the endpoint's address ([`RpcError::QueueFull`];
    /// [`send_async`](Self::send_async) waits for room instead). Never blocks on the network.
    pub fn send(&self, message: M) -> Result<(), RpcError> {
        match &self.inner.target {
            Target::Local(mailbox) => mailbox
                .post(InboxMessage::OneWay(message))
                .map_err(|_| mailbox.refusal()),
            Target::Remote { client } => {
                let net = self.network()?;
                let body = self.envelope(&message, &net)?;
                match self.post(client.as_ref(), OutboxMessage::OneWay(body), &net)? {
                    Ok(()) => Ok(()),
                    Err((_, queued)) => Err(self.queue_full(client.as_ref(), queued, &net)),
                }
            }
        }
    }

    /// Asks: sends `message` to `receive_and_reply` and returns the pending reply, bounded by the
    /// env's `rpc.askTimeout`. The message is sent exactly once, now, whether or not the reply is
    /// awaited.
    pub fn ask<R: RpcReply>(&self, message: M) -> Ask<R> {
        self.ask_with_timeout(message, self.inner.defaults.ask_timeout.clone())
    }

    /// [`ask`](Self::ask) with an explicit timeout.
    pub fn ask_with_timeout<R: RpcReply>(&self, message: M, timeout: RpcTimeout) -> Ask<R> {
        let slot = ReplySlot::new();
        match &self.inner.target {
            Target::Local(mailbox) => {
                let ctx = RpcCallContext::new(
                    ReplyTarget::Local(slot.clone()),
                    self.inner.defaults.sender.clone(),
                    self.inner.name.clone(),
                );
                if let Err(refused) = mailbox.post(InboxMessage::Rpc(message, Box::new(ctx))) {
                    refused.reject(mailbox.refusal());
                }
            }
            Target::Remote { client } => {
                let sent = self.network().and_then(|net| {
                    let body = self.envelope(&message, &net)?;
                    let message = OutboxMessage::Rpc(body, slot.clone());
                    match self.post(client.as_ref(), message, &net)? {
                        Ok(()) => Ok(()),
                        Err((_, queued)) => Err(self.queue_full(client.as_ref(), queued, &net)),
                    }
                });
                if let Err(e) = sent {
                    slot.complete(Err(e));
                }
            }
        }
        Ask::new(
            slot,
            self.inner.described.clone(),
            timeout,
            self.inner.defaults.runtime.clone(),
        )
    }

    /// Asks and blocks the calling thread for the reply (at most `rpc.askTimeout`).
    ///
    /// Returns [`RpcError::BlockingInAsyncContext`] without sending anything when called on a
    /// tokio runtime thread: `.await` an [`ask`](Self::ask) there. Blocking inside a handler ties
    /// up a message loop thread for the wait; prefer answering from a task.
    pub fn ask_sync<R: RpcReply>(&self, message: M) -> Result<R, RpcError> {
        ensure_blocking_allowed("RpcEndpointRef::ask_sync")?;
        self.ask(message).wait()
    }

    /// [`ask_sync`](Self::ask_sync) with an explicit timeout.
    pub fn ask_sync_with_timeout<R: RpcReply>(
        &self,
        message: M,
        timeout: RpcTimeout,
    ) -> Result<R, RpcError> {
        ensure_blocking_allowed("RpcEndpointRef::ask_sync_with_timeout")?;
        self.ask_with_timeout(message, timeout).wait()
    }

    /// Asks up to `rpc.numRetries` times (default 3), `rpc.retry.wait` apart (default 3 s), each
    /// attempt bounded by `rpc.askTimeout`, and blocks for the first reply.
    ///
    /// **Only for idempotent handlers.** A timed-out attempt may still have been processed, so a
    /// retry can apply a request twice. That is why Spark deprecated `askWithRetry` (SPARK-19347,
    /// SPARK-19450) for `askSync` and later removed the settings (SPARK-39266): prefer
    /// [`ask_sync`](Self::ask_sync) and decide about retries where the semantics are known. Errors
    /// that a retry cannot change (a stopped env or endpoint, a reply of the wrong type) end the
    /// attempts at once.
    pub fn ask_with_retry<R: RpcReply>(&self, message: M) -> Result<R, RpcError>
    where
        M: Clone,
    {
        ensure_blocking_allowed("RpcEndpointRef::ask_with_retry")?;
        let attempts = self.inner.defaults.num_retries.max(1);
        let mut last = None;
        for attempt in 1..=attempts {
            match self.ask::<R>(message.clone()).wait() {
                Ok(reply) => return Ok(reply),
                Err(
                    e @ (RpcError::EnvStopped
                    | RpcError::EndpointStopped { .. }
                    | RpcError::UnexpectedReplyType { .. }
                    | RpcError::BlockingInAsyncContext { .. }),
                ) => return Err(e),
                Err(e) => {
                    tracing::warn!(endpoint = %self.inner.address, attempt, attempts, error = %e, "ask failed");
                    last = Some(e);
                    if attempt < attempts {
                        std::thread::sleep(self.inner.defaults.retry_wait);
                    }
                }
            }
        }
        Err(RpcError::RetriesExhausted {
            endpoint: self.inner.address.to_string(),
            attempts,
            last: Box::new(last.expect("at least one attempt was made")),
        })
    }

    /// The inbox behind a local ref.
    pub(crate) fn control(&self) -> Option<&dyn InboxControl> {
        match &self.inner.target {
            Target::Local(mailbox) => Some(mailbox.control()),
            Target::Remote { .. } => None,
        }
    }
}

impl<M> RpcEndpointRef<M> {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address of the endpoint's env (`None` for an endpoint of a client-mode env).
    pub fn address(&self) -> Option<&RpcAddress> {
        self.inner.address.address()
    }

    /// The endpoint's full address (`rpc://name@host:port`).
    pub fn endpoint_address(&self) -> &RpcEndpointAddress {
        &self.inner.address
    }
}

impl<M> PartialEq for RpcEndpointRef<M> {
    fn eq(&self, other: &Self) -> bool {
        self.inner.address == other.inner.address
    }
}

impl<M> Eq for RpcEndpointRef<M> {}

impl<M> Hash for RpcEndpointRef<M> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.address.hash(state);
    }
}

impl<M> fmt::Display for RpcEndpointRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RpcEndpointRef({})", self.inner.address)
    }
}

impl<M> fmt::Debug for RpcEndpointRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn message_len(message: &OutboxMessage) -> usize {
    match message {
        OutboxMessage::OneWay(b) | OutboxMessage::Rpc(b, _) => b.len(),
    }
}

/// How a ref travels: its endpoint address and the protocol name of its message type.
#[derive(Serialize, Deserialize)]
struct WireRef<'a> {
    address: RpcEndpointAddress,
    #[serde(borrow)]
    protocol: std::borrow::Cow<'a, str>,
}

impl<M: RpcMessage> Serialize for RpcEndpointRef<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef {
            address: (*self.inner.address).clone(),
            protocol: M::protocol_name(),
        }
        .serialize(serializer)
    }
}

impl<'de, M: RpcMessage> Deserialize<'de> for RpcEndpointRef<M> {
    /// Rebinds the ref to the env that is deserializing it: possible only while an env decodes
    /// an incoming message.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireRef::deserialize(deserializer)?;
        if wire.protocol != M::protocol_name() {
            return Err(serde::de::Error::custom(format!(
                "ref to {} speaks {} but {} was expected",
                wire.address,
                wire.protocol,
                M::protocol_name()
            )));
        }
        crate::env::rebind_ref::<M>(wire.address).map_err(serde::de::Error::custom)
    }
}
