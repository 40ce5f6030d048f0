//! What goes into an inbox ([`InboxMessage`], [`Event`]) and the two views of an inbox its users
//! hold: [`Mailbox`] (a ref's, typed by the message type) and [`InboxControl`] (the
//! dispatcher's and the network's, whatever the message type).
//!
//! These sit below refs, endpoints and the inbox itself, so that each of those can name them
//! without importing the others.

use std::sync::Arc;

use crate::address::RpcAddress;
use crate::blocking::WaitNode;
use crate::call_context::RpcCallContext;
use crate::decode_scope::DecodeScope;
use crate::error::RpcError;
use crate::stats::EndpointStats;

/// A lifecycle or network event, delivered to an endpoint's callback of the same name.
#[derive(Clone)]
pub(crate) enum Event {
    /// The first message of every inbox: runs `on_start`, alone.
    OnStart,
    /// The last message of every inbox: runs `on_stop`, alone.
    OnStop,
    /// A remote process connected (its socket address, later its listening address).
    Connected(RpcAddress),
    /// A remote process disconnected.
    Disconnected(RpcAddress),
    /// The connection to a remote process failed.
    NetworkError(Arc<RpcError>, RpcAddress),
}

/// A message in an inbox.
pub(crate) enum InboxMessage<M> {
    OneWay(M),
    /// Boxed: an inbox holds many messages, and the context would double the size of each.
    Rpc(M, Box<RpcCallContext>),
    Event(Event),
}

impl<M> InboxMessage<M> {
    /// What kind of message this is, for logs: `ask`, `one-way` or `event`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            InboxMessage::OneWay(_) => "one-way",
            InboxMessage::Rpc(..) => "ask",
            InboxMessage::Event(_) => "event",
        }
    }

    /// Reports a message that could not be delivered: an ask fails with `error`.
    pub(crate) fn reject(self, error: RpcError) {
        if let InboxMessage::Rpc(_, ctx) = self {
            (*ctx).fail(error);
        }
    }
}

/// An inbox seen through its message type: what a local ref posts to.
pub(crate) trait Mailbox<M>: Send + Sync {
    /// Queues a message; a refused message (the endpoint is stopped) is handed back.
    fn post(&self, message: InboxMessage<M>) -> Result<(), InboxMessage<M>>;
    /// The error a refused post is reported with.
    fn refusal(&self) -> RpcError;
    /// The same inbox, untyped.
    fn control(&self) -> &dyn InboxControl;
}

/// What the dispatcher and the network need of an inbox whatever its message type.
pub(crate) trait InboxControl: Send + Sync {
    /// Queues `on_stop` after the queued messages; false if it was stopped already.
    fn stop(&self) -> bool;
    /// Queues a network event (a stopped endpoint no longer hears them).
    fn post_event(&self, event: &Event);
    /// The endpoint as the deadlock check of blocking asks sees it.
    fn wait_node(&self) -> &Arc<WaitNode>;
    /// The endpoint's name (shared, so contexts of remote asks need not copy it).
    fn endpoint_name(&self) -> Arc<str>;
    /// A snapshot of the inbox's counters and depth (takes its lock once).
    fn stats(&self) -> EndpointStats;
    /// Decodes a message that came over the network (refs in it are rebound through `scope`)
    /// and queues it; an ask whose message cannot be decoded or delivered fails.
    fn post_remote(&self, content: &[u8], reply: Option<RpcCallContext>, scope: DecodeScope);
}
