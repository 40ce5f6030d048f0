//! [`RpcEndpointRef`]: a typed handle to an endpoint, local or remote, through which messages are
//! sent and asks made.
//!
//! A ref's [`Route`] says where its messages go: into a local inbox, to the outbox of another
//! env's address, or over the connection a client-mode env opened. The remote routes go through
//! [`RefNetwork`], the network as refs see it, which the remote layer implements: refs are handed
//! to endpoints by this (local) layer, and it does not import the layer above.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use rpcenv_transport::{Body, TransportClient};

use crate::address::{RpcAddress, RpcEndpointAddress};
use crate::blocking;
use crate::call_context::{ReplyTarget, RpcCallContext};
use crate::codec::{encode_with_header, envelope_header};
use crate::error::RpcError;
use crate::mailbox::{InboxControl, InboxMessage, Mailbox};
use crate::message::{RpcMessage, RpcReply};
use crate::reply::{Ask, Waits};
use crate::reply_slot::ReplySlot;
use crate::timeout::{ensure_blocking_allowed, RpcTimeout};

/// A serialized message on its way to another process.
pub(crate) enum OutboxMessage {
    OneWay(Body),
    Rpc(Body, Arc<ReplySlot>),
}

impl OutboxMessage {
    /// The bytes it counts for against `rpc.outbox.maxBytes`.
    pub(crate) fn len(&self) -> usize {
        match self {
            OutboxMessage::OneWay(b) | OutboxMessage::Rpc(b, _) => b.len(),
        }
    }
}

/// Why the network did not take a message.
pub(crate) enum Refused {
    /// `rpc.outbox.maxBytes` would be exceeded: the message back, and the bytes already waiting.
    Full(OutboxMessage, usize),
    /// The route cannot carry it (its connection is closed).
    Failed(RpcError),
}

/// A future the network hands back (object-safe form of an `async fn`).
pub(crate) type Waiting<'a> = Pin<Box<dyn Future<Output = Result<(), RpcError>> + Send + 'a>>;

/// The network of an env, as its refs see it: implemented by the remote layer's `Network`.
pub(crate) trait RefNetwork: Send + Sync {
    /// Checks a serialized message against `rpc.message.maxSize` before anything is written.
    fn check_size(&self, body: &Body) -> Result<(), RpcError>;
    /// `rpc.outbox.maxBytes`.
    fn outbox_max_bytes(&self) -> usize;
    /// Hands a message to the outbox of `address` (opened on first use); never blocks.
    fn post_to(&self, address: &RpcAddress, message: OutboxMessage) -> Result<(), Refused>;
    /// Hands a message to the connection `client` (a client-mode endpoint's route).
    fn post_over(&self, client: &TransportClient, message: OutboxMessage) -> Result<(), Refused>;
    /// Completes when `need` more bytes fit in the outbox of `address`.
    fn room_at<'a>(&'a self, address: &'a RpcAddress, need: usize) -> Waiting<'a>;
    /// Completes when `need` more bytes fit in the queue of `client`.
    fn room_over<'a>(&'a self, client: &'a TransportClient, need: usize) -> Waiting<'a>;
}

/// What the refs of one env share: defaults, the runtime and the network.
pub(crate) struct RefDefaults {
    pub(crate) ask_timeout: RpcTimeout,
    pub(crate) num_retries: u32,
    pub(crate) retry_wait: Duration,
    /// The runtime the asks' timers run on, and the pace of callers blocked on replies.
    pub(crate) waits: Arc<Waits>,
    /// The address of the env the refs belong to (the sender of their messages).
    pub(crate) sender: Option<RpcAddress>,
    /// A random identity of the env, which refs to its client-mode endpoints carry: they have no
    /// address, so this is how an env recognizes its own endpoints among address-less refs.
    pub(crate) env_id: u64,
    /// The env's network, for remote routes.
    pub(crate) network: Weak<dyn RefNetwork>,
    /// Set when the env begins to shut down: remote sends are refused from then on.
    pub(crate) env_stopped: Arc<AtomicBool>,
}

/// Where a ref's messages go.
pub(crate) enum Route<M> {
    /// Into an inbox of this env: the message is moved, not serialized.
    Local(Arc<dyn Mailbox<M>>),
    /// Another env's endpoint: through the outbox of its address.
    Outbox(RpcAddress),
    /// An endpoint of a client-mode env: over the connection that env opened; with the identity
    /// of that env (`RefDefaults::env_id` there).
    Connection(TransportClient, u64),
    /// An endpoint of a client-mode env whose connection this env does not hold (the ref was
    /// forwarded by a third env): every send and ask fails with
    /// [`RpcError::ClientEndpointUnreachable`]. With the identity of the endpoint's env.
    Unreachable(u64),
}

struct RefInner<M> {
    address: Arc<RpcEndpointAddress>,
    /// What timeout errors name: the address, or for a ref bound to a connection, the peer.
    described: Arc<RpcEndpointAddress>,
    name: Arc<str>,
    route: Route<M>,
    defaults: Arc<RefDefaults>,
    /// The envelope header of this ref's remote messages, encoded on first use.
    header: OnceLock<Bytes>,
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
    /// A ref to `address` over `route`.
    pub(crate) fn new(
        address: RpcEndpointAddress,
        route: Route<M>,
        defaults: Arc<RefDefaults>,
    ) -> Self {
        let name: Arc<str> = address.name().into();
        let described = match (&route, address.address()) {
            (Route::Connection(c, _), None) => Arc::new(RpcEndpointAddress::new(
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
                route,
                defaults,
                header: OnceLock::new(),
            }),
        }
    }

    /// The network of the ref's env, or why there is none.
    fn network(&self) -> Result<Arc<dyn RefNetwork>, RpcError> {
        let defaults = &self.inner.defaults;
        if defaults.env_stopped.load(Ordering::Acquire) {
            return Err(RpcError::EnvStopped);
        }
        defaults.network.upgrade().ok_or(RpcError::EnvStopped)
    }

    /// Serializes `message` in an envelope for the remote endpoint.
    fn envelope(&self, message: &M, net: &dyn RefNetwork) -> Result<Body, RpcError> {
        let header = self.inner.header.get_or_init(|| {
            envelope_header(
                self.inner.defaults.sender.as_ref(),
                self.inner.address.address(),
                &self.inner.name,
            )
        });
        let body = encode_with_header(header, message).map_err(|e| RpcError::Serialization {
            endpoint: self.inner.address.to_string(),
            message: e,
        })?;
        net.check_size(&body)?;
        Ok(body)
    }

    /// Hands a serialized message to the remote route. A message that does not fit under
    /// `rpc.outbox.maxBytes` is handed back with the bytes already waiting.
    fn post_remote(&self, net: &dyn RefNetwork, message: OutboxMessage) -> Result<(), Refused> {
        match &self.inner.route {
            Route::Outbox(address) => net.post_to(address, message),
            Route::Connection(client, _) => net.post_over(client, message),
            Route::Unreachable(_) => Err(Refused::Failed(RpcError::ClientEndpointUnreachable {
                uri: self.inner.address.to_string(),
            })),
            Route::Local(_) => unreachable!("a local ref posts to its inbox"),
        }
    }

    /// Waits until `need` more bytes fit on the remote route; fails with the failure of the
    /// connection if it ends meanwhile.
    async fn room(&self, net: &dyn RefNetwork, need: usize) -> Result<(), RpcError> {
        match &self.inner.route {
            Route::Outbox(address) => net.room_at(address, need).await,
            Route::Connection(client, _) => net.room_over(client, need).await,
            Route::Local(_) | Route::Unreachable(_) => Ok(()),
        }
    }

    /// [`Refused`] as the error a caller gets.
    fn refusal(&self, refused: Refused, net: &dyn RefNetwork) -> RpcError {
        match refused {
            Refused::Failed(e) => e,
            Refused::Full(_, queued) => RpcError::QueueFull {
                peer: match &self.inner.route {
                    Route::Connection(c, _) => c.remote_addr().to_string(),
                    _ => self.inner.address.to_string(),
                },
                queued,
                max: net.outbox_max_bytes(),
            },
        }
    }

    /// Sends a one-way message, waiting while more than `rpc.outbox.maxBytes` wait to be sent
    /// to the endpoint instead of failing with [`RpcError::QueueFull`]. For a local endpoint it
    /// is [`send`](Self::send).
    pub async fn send_async(&self, message: M) -> Result<(), RpcError> {
        if let Route::Local(_) = &self.inner.route {
            return self.send(message);
        }
        let net = self.network()?;
        let mut pending = OutboxMessage::OneWay(self.envelope(&message, &*net)?);
        loop {
            match self.post_remote(&*net, pending) {
                Ok(()) => return Ok(()),
                Err(Refused::Full(back, _)) => {
                    self.room(&*net, back.len()).await?;
                    pending = back;
                }
                Err(refused) => return Err(self.refusal(refused, &*net)),
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn local_for_tests(mailbox: Arc<dyn Mailbox<M>>) -> Self {
        let defaults = Arc::new(RefDefaults {
            ask_timeout: RpcTimeout::new(Duration::from_secs(120), "rpc.askTimeout"),
            num_retries: 3,
            retry_wait: Duration::from_secs(3),
            waits: Arc::new(Waits::new(
                crate::runtime::shared_runtime(1),
                Duration::ZERO,
            )),
            sender: None,
            env_id: 0,
            network: Weak::<NoNetwork>::new(),
            env_stopped: Arc::new(AtomicBool::new(false)),
        });
        Self::new(
            RpcEndpointAddress::new(None, "test"),
            Route::Local(mailbox),
            defaults,
        )
    }

    /// Sends a one-way message. Returns once it is queued; the endpoint's `receive` handles it.
    ///
    /// Fails at once (the message is not delivered) when the endpoint is stopped
    /// ([`RpcError::EndpointStopped`]) or its env is ([`RpcError::EnvStopped`]), when the
    /// message exceeds `rpc.message.maxSize` ([`RpcError::MessageTooLarge`]), or when more than
    /// `rpc.outbox.maxBytes` wait to be sent to the endpoint's address ([`RpcError::QueueFull`];
    /// [`send_async`](Self::send_async) waits for room instead). Never blocks on the network.
    pub fn send(&self, message: M) -> Result<(), RpcError> {
        if let Route::Local(mailbox) = &self.inner.route {
            return mailbox
                .post(InboxMessage::OneWay(message))
                .map_err(|_| mailbox.refusal());
        }
        let net = self.network()?;
        let body = self.envelope(&message, &*net)?;
        self.post_remote(&*net, OutboxMessage::OneWay(body))
            .map_err(|refused| self.refusal(refused, &*net))
    }

    /// Asks: sends `message` to `receive_and_reply` and returns the pending reply, bounded by the
    /// env's `rpc.askTimeout`. The message is sent exactly once, now, whether or not the reply is
    /// awaited.
    pub fn ask<R: RpcReply>(&self, message: M) -> Ask<R> {
        self.ask_with_timeout(message, self.inner.defaults.ask_timeout.clone())
    }

    /// [`ask`](Self::ask) with an explicit timeout.
    pub fn ask_with_timeout<R: RpcReply>(&self, message: M, timeout: RpcTimeout) -> Ask<R> {
        self.ask_into(ReplySlot::new(), message, timeout)
    }

    /// Asks with the reply to arrive in `slot`.
    fn ask_into<R: RpcReply>(
        &self,
        slot: Arc<ReplySlot>,
        message: M,
        timeout: RpcTimeout,
    ) -> Ask<R> {
        if let Route::Local(mailbox) = &self.inner.route {
            let ctx = RpcCallContext::new(
                ReplyTarget::Local(slot.clone()),
                self.inner.defaults.sender.clone(),
                self.inner.name.clone(),
            );
            if let Err(refused) = mailbox.post(InboxMessage::Rpc(message, Box::new(ctx))) {
                refused.reject(mailbox.refusal());
            }
        } else {
            let sent = self.network().and_then(|net| {
                let body = self.envelope(&message, &*net)?;
                self.post_remote(&*net, OutboxMessage::Rpc(body, slot.clone()))
                    .map_err(|refused| self.refusal(refused, &*net))
            });
            if let Err(e) = sent {
                slot.complete(Err(e));
            }
        }
        Ask::new(
            slot,
            self.inner.described.clone(),
            timeout,
            self.inner.defaults.waits.clone(),
        )
    }

    /// Asks and blocks the calling thread for the reply (at most `rpc.askTimeout`).
    ///
    /// Returns [`RpcError::BlockingInAsyncContext`] without sending anything when called on a
    /// tokio runtime thread: `.await` an [`ask`](Self::ask) there. Blocking inside a handler ties
    /// up a message loop thread for the wait; prefer answering from a task.
    ///
    /// From a handler, an ask that could only be answered after that handler returns (an
    /// endpoint that processes one message at a time asking itself, directly or through other
    /// handlers blocked in `ask_sync`) fails at once with [`RpcError::Deadlock`]; while the
    /// handler waits, the shared message loop may run a compensating thread
    /// (`rpc.messageLoop.maxExtraThreads`), and the env's shutdown fails the ask.
    pub fn ask_sync<R: RpcReply>(&self, message: M) -> Result<R, RpcError> {
        ensure_blocking_allowed("RpcEndpointRef::ask_sync")?;
        self.ask_blocking(message, self.inner.defaults.ask_timeout.clone())
    }

    /// Asks and blocks for the reply, with the precautions of a blocking ask (see
    /// [`ask_sync`](Self::ask_sync)).
    fn ask_blocking<R: RpcReply>(&self, message: M, timeout: RpcTimeout) -> Result<R, RpcError> {
        let target = match &self.inner.route {
            Route::Local(mailbox) => Some(mailbox.control().wait_node()),
            _ => None,
        };
        // Entered before the message goes: the target may answer and ask this handler back
        // before this thread runs again, and must then see that the answer has come.
        let slot = ReplySlot::new();
        let waits = &self.inner.defaults.waits;
        let _blocking = blocking::enter(target, &self.inner.address, &waits.blocked, &slot)?;
        self.ask_into(slot, message, timeout).block()
    }

    /// [`ask_sync`](Self::ask_sync) with an explicit timeout.
    pub fn ask_sync_with_timeout<R: RpcReply>(
        &self,
        message: M,
        timeout: RpcTimeout,
    ) -> Result<R, RpcError> {
        ensure_blocking_allowed("RpcEndpointRef::ask_sync_with_timeout")?;
        self.ask_blocking(message, timeout)
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
            match self.ask_blocking::<R>(message.clone(), self.inner.defaults.ask_timeout.clone()) {
                Ok(reply) => return Ok(reply),
                Err(
                    e @ (RpcError::EnvStopped
                    | RpcError::EndpointStopped { .. }
                    | RpcError::UnexpectedReplyType { .. }
                    | RpcError::Deadlock { .. }
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
        match &self.inner.route {
            Route::Local(mailbox) => Some(mailbox.control()),
            Route::Outbox(_) | Route::Connection(..) | Route::Unreachable(_) => None,
        }
    }

    /// For a ref to a client-mode endpoint, how it travels: the identity of the endpoint's env,
    /// and whether this env holds the ref second-hand (it is not the endpoint's own env, so the
    /// connection a message from here travels on does not lead to the endpoint).
    pub(crate) fn client_origin(&self) -> (u64, bool) {
        match &self.inner.route {
            Route::Local(_) => (self.inner.defaults.env_id, false),
            Route::Connection(_, owner) | Route::Unreachable(owner) => (*owner, true),
            Route::Outbox(_) => (0, true),
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

/// A network that never exists, for refs built in unit tests.
#[cfg(test)]
struct NoNetwork;

#[cfg(test)]
impl RefNetwork for NoNetwork {
    fn check_size(&self, _: &Body) -> Result<(), RpcError> {
        Ok(())
    }
    fn outbox_max_bytes(&self) -> usize {
        0
    }
    fn post_to(&self, _: &RpcAddress, _: OutboxMessage) -> Result<(), Refused> {
        Err(Refused::Failed(RpcError::EnvStopped))
    }
    fn post_over(&self, _: &TransportClient, _: OutboxMessage) -> Result<(), Refused> {
        Err(Refused::Failed(RpcError::EnvStopped))
    }
    fn room_at<'a>(&'a self, _: &'a RpcAddress, _: usize) -> Waiting<'a> {
        Box::pin(async { Ok(()) })
    }
    fn room_over<'a>(&'a self, _: &'a TransportClient, _: usize) -> Waiting<'a> {
        Box::pin(async { Ok(()) })
    }
}
