//! The endpoint traits: [`RpcEndpoint`] (one message at a time, `&mut self`) and
//! [`ConcurrentRpcEndpoint`] (`&self`, may run on several loop threads at once), and
//! [`EndpointCtx`], what every callback is handed.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;

use crate::address::RpcAddress;
use crate::call_context::RpcCallContext;
use crate::endpoint_ref::RpcEndpointRef;
use crate::error::{HandlerResult, RpcError};
use crate::message::RpcMessage;

/// An endpoint that processes one message at a time (Spark's `ThreadSafeRpcEndpoint`).
///
/// Callbacks run on the env's message loop threads, never two at once for one endpoint, in the
/// order the messages were posted; the effects of one are visible to the next. `on_start` runs
/// first and `on_stop` last. Handlers are synchronous: long or blocking work belongs elsewhere
/// (spawn it on [`EndpointCtx::runtime`] and answer the [`RpcCallContext`] from there).
///
/// Every callback may return an error (any `Box<dyn Error>`-convertible error, via `?`); it is
/// handed to [`on_error`](Self::on_error). A panic is caught and reported the same way: the loop
/// thread survives, and an asker gets a failure.
///
/// ```
/// use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEnv};
///
/// struct Echo;
/// impl RpcEndpoint for Echo {
///     type Message = String;
///     fn receive_and_reply(&mut self, _: &EndpointCtx<String>, msg: String, ctx: RpcCallContext) -> HandlerResult {
///         ctx.reply(msg);
///         Ok(())
///     }
/// }
///
/// let env = RpcEnv::builder("doc").client_mode(true).build()?;
/// let echo = env.setup_endpoint("echo", Echo)?;
/// assert_eq!(echo.ask_sync::<String>("hello".to_string())?, "hello");
/// env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
pub trait RpcEndpoint: Send + 'static {
    /// The messages this endpoint accepts.
    type Message: RpcMessage;

    /// Called once, first, before any message.
    fn on_start(&mut self, ctx: &EndpointCtx<Self::Message>) -> HandlerResult {
        let _ = ctx;
        Ok(())
    }

    /// A message sent with [`RpcEndpointRef::send`]. The default reports
    /// [`RpcError::NotImplemented`] to `on_error`.
    fn receive(
        &mut self,
        ctx: &EndpointCtx<Self::Message>,
        message: Self::Message,
    ) -> HandlerResult {
        let _ = message;
        Err(not_implemented(ctx, "receive"))
    }

    /// A message sent with [`RpcEndpointRef::ask`]; answer through `reply`, now or later. The
    /// default answers the asker with a failure.
    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<Self::Message>,
        message: Self::Message,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let _ = message;
        reply_not_implemented(ctx, reply);
        Ok(())
    }

    /// An error raised by another callback of this endpoint. The default logs it.
    fn on_error(&mut self, ctx: &EndpointCtx<Self::Message>, error: RpcError) -> HandlerResult {
        log_error(ctx, &error);
        Ok(())
    }

    /// A remote process connected (its socket address, and later its listening address).
    fn on_connected(
        &mut self,
        ctx: &EndpointCtx<Self::Message>,
        remote: &RpcAddress,
    ) -> HandlerResult {
        let _ = (ctx, remote);
        Ok(())
    }

    /// A remote process disconnected.
    fn on_disconnected(
        &mut self,
        ctx: &EndpointCtx<Self::Message>,
        remote: &RpcAddress,
    ) -> HandlerResult {
        let _ = (ctx, remote);
        Ok(())
    }

    /// The connection to a remote process failed.
    fn on_network_error(
        &mut self,
        ctx: &EndpointCtx<Self::Message>,
        error: &RpcError,
        remote: &RpcAddress,
    ) -> HandlerResult {
        let _ = (ctx, error, remote);
        Ok(())
    }

    /// Called once, last. [`EndpointCtx::self_ref`] is `None` here.
    fn on_stop(&mut self, ctx: &EndpointCtx<Self::Message>) -> HandlerResult {
        let _ = ctx;
        Ok(())
    }

    /// Whether this endpoint gets a message loop thread of its own (Spark's
    /// `IsolatedThreadSafeRpcEndpoint`), so that a busy shared pool cannot starve it and it cannot
    /// starve others. Read once, at registration.
    fn isolated(&self) -> bool {
        false
    }

    /// Whether messages from the network are handled inline: on the IO thread that read them,
    /// while the endpoint is idle (nothing queued or running), instead of being handed to a
    /// message loop thread. Read once, at registration; `false` by default.
    ///
    /// It saves a thread hand-off per message: at a light load (one ask at a time, a heartbeat)
    /// most of an ask's CPU, since the IO thread reads the request, runs the handler and writes
    /// the answer with no other thread woken; at a heavy one (pipelined asks, many peers) the
    /// wake-ups and the core a loop thread would take from the IO threads. The requests that
    /// one read brings are handled one after another as they are decoded, and their answers
    /// leave together. For handlers that answer within microseconds and never block:
    /// - blocking calls on an IO thread fail at once with
    ///   [`RpcError::BlockingInAsyncContext`] (`ask_sync`, `Ask::wait`, the blocking stream
    ///   and file calls): ask with `ask` and answer from the reply's callback or a task;
    /// - while the handler runs, the IO thread reads no other connection.
    ///
    /// Messages that find the endpoint busy (running for another IO thread's connection, or for
    /// a local message) are queued and run on the message loop, and so do local messages,
    /// `on_start`, `on_stop` and network events; that loop thread does not stay awake for the
    /// endpoint's next message once its queue is empty, since the next one from the network
    /// needs no thread. The handler still runs for one message at a time and in the order the
    /// messages were posted.
    fn inline(&self) -> bool {
        false
    }
}

/// An endpoint whose messages may be processed by several loop threads at once (Spark's plain
/// `RpcEndpoint`): callbacks take `&self`, so its state must be `Sync`.
///
/// `on_start` still runs first and alone, and `on_stop` last and alone; between them, messages
/// may run concurrently and complete out of order.
pub trait ConcurrentRpcEndpoint: Send + Sync + 'static {
    /// The messages this endpoint accepts.
    type Message: RpcMessage;

    /// Called once, first, before any message, alone.
    fn on_start(&self, ctx: &EndpointCtx<Self::Message>) -> HandlerResult {
        let _ = ctx;
        Ok(())
    }

    /// A message sent with `send`. The default reports [`RpcError::NotImplemented`].
    fn receive(&self, ctx: &EndpointCtx<Self::Message>, message: Self::Message) -> HandlerResult {
        let _ = message;
        Err(not_implemented(ctx, "receive"))
    }

    /// A message sent with `ask`. The default answers the asker with a failure.
    fn receive_and_reply(
        &self,
        ctx: &EndpointCtx<Self::Message>,
        message: Self::Message,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let _ = message;
        reply_not_implemented(ctx, reply);
        Ok(())
    }

    /// An error raised by another callback. The default logs it.
    fn on_error(&self, ctx: &EndpointCtx<Self::Message>, error: RpcError) -> HandlerResult {
        log_error(ctx, &error);
        Ok(())
    }

    /// A remote process connected.
    fn on_connected(&self, ctx: &EndpointCtx<Self::Message>, remote: &RpcAddress) -> HandlerResult {
        let _ = (ctx, remote);
        Ok(())
    }

    /// A remote process disconnected.
    fn on_disconnected(
        &self,
        ctx: &EndpointCtx<Self::Message>,
        remote: &RpcAddress,
    ) -> HandlerResult {
        let _ = (ctx, remote);
        Ok(())
    }

    /// The connection to a remote process failed.
    fn on_network_error(
        &self,
        ctx: &EndpointCtx<Self::Message>,
        error: &RpcError,
        remote: &RpcAddress,
    ) -> HandlerResult {
        let _ = (ctx, error, remote);
        Ok(())
    }

    /// Called once, last, alone.
    fn on_stop(&self, ctx: &EndpointCtx<Self::Message>) -> HandlerResult {
        let _ = ctx;
        Ok(())
    }

    /// Threads of a message loop of this endpoint's own (Spark's `IsolatedRpcEndpoint`); `0`, the
    /// default, shares the env's pool. Read once, at registration.
    fn dedicated_threads(&self) -> usize {
        0
    }

    /// Whether messages from the network are handled inline: on the IO thread that read them,
    /// while the endpoint is idle (nothing queued or running), instead of being handed to a
    /// message loop thread. Read once, at registration; `false` by default.
    ///
    /// It saves a thread hand-off per message: at a light load (one ask at a time, a heartbeat)
    /// most of an ask's CPU, since the IO thread reads the request, runs the handler and writes
    /// the answer with no other thread woken; at a heavy one (pipelined asks, many peers) the
    /// wake-ups and the core a loop thread would take from the IO threads. The requests that
    /// one read brings are handled one after another as they are decoded, and their answers
    /// leave together. For handlers that answer within microseconds and never block:
    /// - blocking calls on an IO thread fail at once with
    ///   [`RpcError::BlockingInAsyncContext`] (`ask_sync`, `Ask::wait`, the blocking stream
    ///   and file calls): ask with `ask` and answer from the reply's callback or a task;
    /// - while the handler runs, the IO thread reads no other connection.
    ///
    /// Messages that find the endpoint busy (running for another IO thread's connection, or for
    /// a local message) are queued and run on the message loop, and so do local messages,
    /// `on_start`, `on_stop` and network events; that loop thread does not stay awake for the
    /// endpoint's next message once its queue is empty, since the next one from the network
    /// needs no thread. A message that runs inline still counts among the endpoint's
    /// concurrent calls.
    fn inline(&self) -> bool {
        false
    }
}

fn not_implemented<M>(ctx: &EndpointCtx<M>, method: &'static str) -> crate::BoxError {
    Box::new(RpcError::NotImplemented {
        endpoint: ctx.name().to_string(),
        method,
    })
}

fn reply_not_implemented<M>(ctx: &EndpointCtx<M>, reply: RpcCallContext) {
    reply.send_failure(RpcError::NotImplemented {
        endpoint: ctx.name().to_string(),
        method: "receive_and_reply",
    });
}

fn log_error<M>(ctx: &EndpointCtx<M>, error: &RpcError) {
    if ctx.is_stopping() {
        tracing::debug!(endpoint = ctx.name(), %error, "ignoring error of a stopping endpoint");
    } else {
        tracing::error!(endpoint = ctx.name(), %error, "ignoring error (implement on_error to handle it)");
    }
}

/// What every callback of an endpoint is handed: its name, its own ref, and its env.
///
/// Its [`env`](Self::env) and [`stop`](Self::stop) reach the env, which sits in the layer above
/// this one: they are defined with the env (`env/api.rs`), and the env is held here type-erased.
pub struct EndpointCtx<M> {
    self_ref: RpcEndpointRef<M>,
    /// The env (its shared state), type-erased: this layer does not name it.
    env: Weak<dyn Any + Send + Sync>,
    runtime: tokio::runtime::Handle,
    stopping: AtomicBool,
}

impl<M> std::fmt::Debug for EndpointCtx<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointCtx")
            .field("endpoint", &self.self_ref)
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

impl<M: RpcMessage> EndpointCtx<M> {
    pub(crate) fn new(
        self_ref: RpcEndpointRef<M>,
        env: Weak<dyn Any + Send + Sync>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        EndpointCtx {
            self_ref,
            env,
            runtime,
            stopping: AtomicBool::new(false),
        }
    }

    /// This endpoint's own ref: available from `on_start` on, `None` once the endpoint is
    /// stopping (in `on_stop`), as in Spark.
    pub fn self_ref(&self) -> Option<&RpcEndpointRef<M>> {
        if self.is_stopping() {
            None
        } else {
            Some(&self.self_ref)
        }
    }
}

impl<M> EndpointCtx<M> {
    /// The name the endpoint was registered under.
    pub fn name(&self) -> &str {
        self.self_ref.name()
    }

    /// The env's shared state, type-erased (see [`env`](Self::env)).
    pub(crate) fn env_handle(&self) -> &Weak<dyn Any + Send + Sync> {
        &self.env
    }

    /// The endpoint's own ref, even while it stops.
    pub(crate) fn own_ref(&self) -> &RpcEndpointRef<M> {
        &self.self_ref
    }

    /// The env's tokio runtime, for async work started from a handler (asks to other endpoints,
    /// timers, IO) without blocking the message loop.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Whether `on_stop` has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn mark_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}
