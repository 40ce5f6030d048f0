//! [`RpcCallContext`]: the asker's side of an ask, handed to `receive_and_reply`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::address::RpcAddress;
use crate::codec::{encode_reply_error, encode_reply_ok, WireError};
use crate::error::{BoxError, Failure, FailureKind, RpcError};
use crate::message::RpcReply;
use crate::reply_slot::{ReplySlot, ReplyValue};
use crate::stream_manager::StreamOwner;
use rpcenv_transport::{RpcResponder, TransportClient};

/// Where the reply of one ask goes.
pub(crate) enum ReplyTarget {
    /// An ask from this env: the reply value is moved into the asker's slot.
    Local(Arc<ReplySlot>),
    /// An ask that came over the network: the reply is serialized into an RpcResponse.
    Remote(RpcResponder),
}

/// Which ask a [`ReplyTarget`] answers: the asker's slot for a local ask, the connection and
/// request id for a remote one (a peer that reuses the id of a request still unanswered makes
/// two asks alike; they are answered on the same connection, under the same id, either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AskId {
    Local(usize),
    Remote {
        connection: Option<u64>,
        request: i64,
    },
}

impl ReplyTarget {
    fn complete_ok<R: RpcReply>(self, value: R, endpoint: &str, write_now: bool) {
        match self {
            ReplyTarget::Local(slot) => {
                slot.complete(Ok(ReplyValue::local(value)));
            }
            ReplyTarget::Remote(responder) => {
                respond(responder, encode_reply_ok(&value, endpoint), write_now)
            }
        }
    }

    fn complete_err(self, error: RpcError, write_now: bool) {
        match self {
            ReplyTarget::Local(slot) => {
                slot.complete(Err(error));
            }
            ReplyTarget::Remote(responder) => respond(
                responder,
                encode_reply_error(&WireError::from_error(&error)).into(),
                write_now,
            ),
        }
    }

    /// Identifies the ask this target answers (for matching without cloning), wherever the
    /// target has been moved to.
    pub(crate) fn id(&self) -> AskId {
        match self {
            ReplyTarget::Local(slot) => AskId::Local(Arc::as_ptr(slot) as *const () as usize),
            ReplyTarget::Remote(responder) => AskId::Remote {
                connection: responder.connection_id(),
                request: responder.request_id(),
            },
        }
    }
}

/// Sends a remote answer: written from this thread when `write_now` and the connection's task is
/// idle (no hand-off to an IO thread, and the answers queued before it leave in the same write),
/// else queued for the connection's task. The write never blocks: what the socket does not take
/// is left to the task.
fn respond(responder: RpcResponder, body: rpcenv_transport::Body, write_now: bool) {
    if write_now {
        responder.respond_now(body);
    } else {
        responder.respond(body);
    }
}

/// The means to answer one ask: reply with a value, or send a failure back.
///
/// It is `Send`: a handler may move it to another thread (or task) and answer later. It is
/// consumed by the answer, so an ask is answered at most once. Dropping it unanswered fails the
/// ask at once with [`RpcError::NoReply`] (or the handler's error, if the handler returned one),
/// so the asker never waits for a timeout that cannot end differently.
///
/// ```
/// use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEnv};
///
/// struct Doubler;
/// impl RpcEndpoint for Doubler {
///     type Message = u64;
///     fn receive_and_reply(&mut self, _: &EndpointCtx<u64>, n: u64, ctx: RpcCallContext) -> HandlerResult {
///         // Answer later, from another thread.
///         std::thread::spawn(move || ctx.reply(n * 2));
///         Ok(())
///     }
/// }
///
/// let env = RpcEnv::builder("doc").client_mode(true).build()?;
/// let doubler = env.setup_endpoint("doubler", Doubler)?;
/// assert_eq!(doubler.ask_sync::<u64>(21)?, 42);
/// env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
pub struct RpcCallContext {
    target: Option<ReplyTarget>,
    sender: Option<RpcAddress>,
    connection: Option<SocketAddr>,
    /// The connection the ask came over, which owns the streams registered for it.
    client: Option<TransportClient>,
    endpoint: Arc<str>,
    /// Write a remote answer from the answering thread (see [`write_answer_now`](Self::write_answer_now)).
    write_now: bool,
}

impl RpcCallContext {
    pub(crate) fn new(target: ReplyTarget, sender: Option<RpcAddress>, endpoint: Arc<str>) -> Self {
        RpcCallContext {
            target: Some(target),
            sender,
            connection: None,
            client: None,
            endpoint,
            write_now: false,
        }
    }

    /// Marks the ask whose answer ends a batch (of a message loop, or of an inline endpoint on
    /// the IO thread that read it): a remote answer is then
    /// written by the answering thread itself when the connection's task is idle, with the
    /// answers queued before it, instead of being handed to an IO thread (which would have to be
    /// woken: at a light load that hand-off is most of an ask's latency). Answers in the middle
    /// of a batch are queued, so that a busy loop's answers still leave together.
    pub(crate) fn write_answer_now(&mut self) {
        self.write_now = true;
    }

    /// The same context, for an ask that arrived over the connection whose peer is `peer`.
    pub(crate) fn with_connection(mut self, peer: SocketAddr) -> Self {
        self.connection = Some(peer);
        self
    }

    /// The same context, for an ask that came over `client` (which owns the streams
    /// registered for the ask).
    pub(crate) fn with_client(mut self, client: TransportClient) -> Self {
        self.client = Some(client);
        self
    }

    /// The owner a stream served to this ask's sender is registered for (with
    /// [`StreamManager::register_stream`](crate::StreamManager::register_stream)): the
    /// connection the ask came over, whose close releases the stream, and the app id that
    /// connection authenticated as, the only app allowed to read it. `None` for an ask from
    /// this process (it has no connection to fetch over).
    pub fn stream_owner(&self) -> Option<StreamOwner> {
        self.client.as_ref().map(StreamOwner::of)
    }

    /// Answers the ask with `value`.
    pub fn reply<R: RpcReply>(mut self, value: R) {
        if let Some(target) = self.target.take() {
            target.complete_ok(value, &self.endpoint, self.write_now);
        }
    }

    /// Answers the ask with a failure; the asker's future fails with [`RpcError::Failed`] whose
    /// [`Failure`] carries `error`'s message (and, locally, the error itself).
    pub fn send_failure(mut self, error: impl Into<BoxError>) {
        if let Some(target) = self.target.take() {
            let error: BoxError = error.into();
            let failure = Failure::from_error(FailureKind::Reported, Arc::from(error));
            target.complete_err(self.failed(failure), self.write_now);
        }
    }

    /// The address of the env that sent the ask (`None` when it came from a client-mode env in
    /// this process).
    pub fn sender_address(&self) -> Option<&RpcAddress> {
        self.sender.as_ref()
    }

    /// The socket address of the peer of the connection the ask arrived over (`None` for an ask
    /// from this process).
    ///
    /// Unlike [`sender_address`](Self::sender_address), which a server-mode peer announces about
    /// itself, this is what the socket says, so it identifies the connection: when that connection
    /// closes, `on_disconnected` is called with this address (as an [`RpcAddress`]). An endpoint
    /// that must not let one peer speak for another keys its peers by it.
    pub fn connection_address(&self) -> Option<SocketAddr> {
        self.connection
    }

    pub(crate) fn target(&self) -> Option<&ReplyTarget> {
        self.target.as_ref()
    }

    /// Fails the ask with `error` (used when the message could not be delivered).
    pub(crate) fn fail(mut self, error: RpcError) {
        if let Some(target) = self.target.take() {
            target.complete_err(error, self.write_now);
        }
    }

    fn failed(&self, failure: Failure) -> RpcError {
        RpcError::Failed {
            endpoint: self.endpoint.to_string(),
            failure,
        }
    }
}

impl Drop for RpcCallContext {
    fn drop(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        // Dropped inside a handler call (or while it unwinds): the dispatcher answers once the
        // handler has returned, with the handler's error if it returned one.
        let endpoint = self.endpoint.clone();
        let deferred = HANDLER_SCOPE.with(move |scope| match &mut *scope.borrow_mut() {
            Some(dropped) => {
                dropped.push((target, endpoint));
                None
            }
            None => Some(target),
        });
        if let Some(target) = deferred {
            target.complete_err(
                RpcError::NoReply {
                    endpoint: self.endpoint.to_string(),
                },
                self.write_now,
            );
        }
    }
}

impl std::fmt::Debug for RpcCallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcCallContext")
            .field("endpoint", &self.endpoint)
            .field("sender", &self.sender)
            .field("answered", &self.target.is_none())
            .finish()
    }
}

/// Call contexts dropped unanswered during a handler call: their targets and endpoint names.
type Dropped = Vec<(ReplyTarget, Arc<str>)>;

thread_local! {
    /// The "inside a handler" flag of this thread (`Some` while a handler runs), with the call
    /// contexts the handler dropped unanswered. A thread-identity flag, not a parameter: a
    /// context's `Drop` has no other way to learn that it runs inside a handler call, whose
    /// outcome (its error, if it returns one) should answer the ask.
    static HANDLER_SCOPE: RefCell<Option<Dropped>> = const { RefCell::new(None) };
}

/// How a `receive_and_reply` call ended, for answering a context it dropped unanswered.
pub(crate) enum CallOutcome {
    Returned,
    Failed(Failure),
}

/// Runs `f` (a handler call) and then answers every call context it dropped unanswered: the one
/// of the current ask (`current`) with `outcome(result)`, any other with [`RpcError::NoReply`].
pub(crate) fn with_handler_scope<T>(
    current: Option<AskId>,
    f: impl FnOnce() -> T,
    outcome: impl FnOnce(&T) -> CallOutcome,
) -> T {
    let outer = HANDLER_SCOPE.with(|s| s.borrow_mut().replace(Vec::new()));
    let result = f();
    let dropped = HANDLER_SCOPE.with(|s| std::mem::replace(&mut *s.borrow_mut(), outer));
    let dropped = dropped.unwrap_or_default();
    if !dropped.is_empty() {
        let mut outcome = Some(outcome(&result));
        for (target, endpoint) in dropped {
            let is_current = current == Some(target.id());
            let error = match (is_current, outcome.take_if(|_| is_current)) {
                (true, Some(CallOutcome::Failed(failure))) => RpcError::Failed {
                    endpoint: endpoint.to_string(),
                    failure,
                },
                _ => RpcError::NoReply {
                    endpoint: endpoint.to_string(),
                },
            };
            target.complete_err(error, false);
        }
    }
    result
}
