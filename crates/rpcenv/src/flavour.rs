//! The two endpoint flavours, [`RpcEndpoint`] (one message at a time, `&mut self`) and
//! [`ConcurrentRpcEndpoint`] (`&self`, several threads at once), adapted in this one place to
//! the one interface the inbox calls: [`Callbacks`], stored behind a [`Behaviour`].

use std::sync::Mutex;

use crate::address::RpcAddress;
use crate::call_context::RpcCallContext;
use crate::endpoint::{ConcurrentRpcEndpoint, EndpointCtx, RpcEndpoint};
use crate::error::{HandlerResult, RpcError};
use crate::message::RpcMessage;

/// The callbacks of either endpoint flavour, behind one interface for the inbox.
pub(crate) trait Callbacks<M> {
    fn on_start(&mut self, ctx: &EndpointCtx<M>) -> HandlerResult;
    fn receive(&mut self, ctx: &EndpointCtx<M>, message: M) -> HandlerResult;
    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<M>,
        message: M,
        reply: RpcCallContext,
    ) -> HandlerResult;
    fn on_error(&mut self, ctx: &EndpointCtx<M>, error: RpcError) -> HandlerResult;
    fn on_connected(&mut self, ctx: &EndpointCtx<M>, remote: &RpcAddress) -> HandlerResult;
    fn on_disconnected(&mut self, ctx: &EndpointCtx<M>, remote: &RpcAddress) -> HandlerResult;
    fn on_network_error(
        &mut self,
        ctx: &EndpointCtx<M>,
        error: &RpcError,
        remote: &RpcAddress,
    ) -> HandlerResult;
    fn on_stop(&mut self, ctx: &EndpointCtx<M>) -> HandlerResult;
}

/// Forwards every callback to the endpoint trait `E`'s method of the same name, called on
/// `self` followed by `$to` (nothing for a one-at-a-time endpoint, `.0` for the shared reference
/// a concurrent one is seen through): the one place both flavours are adapted.
macro_rules! forward_callbacks {
    ($($to:tt)*) => {
        fn on_start(&mut self, ctx: &EndpointCtx<E::Message>) -> HandlerResult {
            E::on_start(self $($to)*, ctx)
        }
        fn receive(&mut self, ctx: &EndpointCtx<E::Message>, message: E::Message) -> HandlerResult {
            E::receive(self $($to)*, ctx, message)
        }
        fn receive_and_reply(
            &mut self,
            ctx: &EndpointCtx<E::Message>,
            message: E::Message,
            reply: RpcCallContext,
        ) -> HandlerResult {
            E::receive_and_reply(self $($to)*, ctx, message, reply)
        }
        fn on_error(&mut self, ctx: &EndpointCtx<E::Message>, error: RpcError) -> HandlerResult {
            E::on_error(self $($to)*, ctx, error)
        }
        fn on_connected(
            &mut self,
            ctx: &EndpointCtx<E::Message>,
            remote: &RpcAddress,
        ) -> HandlerResult {
            E::on_connected(self $($to)*, ctx, remote)
        }
        fn on_disconnected(
            &mut self,
            ctx: &EndpointCtx<E::Message>,
            remote: &RpcAddress,
        ) -> HandlerResult {
            E::on_disconnected(self $($to)*, ctx, remote)
        }
        fn on_network_error(
            &mut self,
            ctx: &EndpointCtx<E::Message>,
            error: &RpcError,
            remote: &RpcAddress,
        ) -> HandlerResult {
            E::on_network_error(self $($to)*, ctx, error, remote)
        }
        fn on_stop(&mut self, ctx: &EndpointCtx<E::Message>) -> HandlerResult {
            E::on_stop(self $($to)*, ctx)
        }
    };
}

impl<E: RpcEndpoint> Callbacks<E::Message> for E {
    forward_callbacks!();
}

/// A concurrent endpoint seen through a shared reference.
struct Shared<'a, E>(&'a E);

impl<E: ConcurrentRpcEndpoint> Callbacks<E::Message> for Shared<'_, E> {
    forward_callbacks!(.0);
}

/// How an endpoint flavour is stored and called.
pub(crate) trait Behaviour: Send + Sync + 'static {
    type Message: RpcMessage;
    /// Whether messages may be processed by several threads at once after `on_start`.
    const CONCURRENT: bool;
    /// Calls `f` with the endpoint's callbacks (a one-at-a-time endpoint is locked meanwhile).
    fn with<T>(&self, f: impl FnOnce(&mut dyn Callbacks<Self::Message>) -> T) -> T;
}

/// A one-at-a-time endpoint. The lock is never contended: the inbox lets one thread in at a time.
pub(crate) struct Sequential<E>(Mutex<E>);

impl<E: RpcEndpoint> Sequential<E> {
    pub(crate) fn new(endpoint: E) -> Self {
        Sequential(Mutex::new(endpoint))
    }
}

impl<E: RpcEndpoint> Behaviour for Sequential<E> {
    type Message = E::Message;
    const CONCURRENT: bool = false;
    fn with<T>(&self, f: impl FnOnce(&mut dyn Callbacks<E::Message>) -> T) -> T {
        // Handlers run under catch_unwind, so the lock is not poisoned by them.
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut *guard)
    }
}

/// A concurrent endpoint.
pub(crate) struct Concurrent<E>(E);

impl<E: ConcurrentRpcEndpoint> Concurrent<E> {
    pub(crate) fn new(endpoint: E) -> Self {
        Concurrent(endpoint)
    }
}

impl<E: ConcurrentRpcEndpoint> Behaviour for Concurrent<E> {
    type Message = E::Message;
    const CONCURRENT: bool = true;
    fn with<T>(&self, f: impl FnOnce(&mut dyn Callbacks<E::Message>) -> T) -> T {
        f(&mut Shared(&self.0))
    }
}
