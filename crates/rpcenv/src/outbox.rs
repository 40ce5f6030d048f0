//! The [`Outbox`] of one remote address: messages to that address in FIFO order, over one
//! lazily opened connection.
//!
//! Spark's Outbox drains its queue on the caller's thread. Here the caller never touches the
//! network: while the connection is being opened (by a task on the IO runtime), messages wait in
//! the outbox's queue; once it is open, the queue is handed to the connection in order and later
//! messages go straight to the connection's writer queue (which batches them into few writes).
//! If the connect fails, every queued message fails with the cause and the outbox is removed, so
//! the next message to that address tries again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use rpcenv_transport::{TransportClient, TransportClientFactory, TransportError, WriteNow};

use crate::address::RpcAddress;
use crate::codec::decode_reply;
use crate::decode_scope::DecodeScope;
use crate::dispatcher::Dispatcher;
use crate::endpoint_ref::OutboxMessage;
use crate::error::RpcError;
use crate::metrics::PeerMetrics;
use crate::reply_slot::{CancelHook, ReplySlot, ReplyValue};

/// The admission rule of the outbox budget (`rpc.outbox.maxBytes`), for every route to a peer:
/// a message of `len` bytes is taken when nothing waits yet (so a message larger than the budget
/// still goes, alone), or when it fits under `max` with the `queued` bytes already waiting.
pub(crate) fn admits(queued: usize, len: usize, max: usize) -> bool {
    queued == 0 || queued + len <= max
}

/// What the outboxes of an env share with the network that owns them: how to connect, the
/// budget, and where replies go.
pub(crate) struct OutboxContext {
    /// The runtime connect tasks run on.
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) factory: TransportClientFactory,
    /// `rpc.outbox.maxBytes`.
    pub(crate) max_bytes: usize,
    /// The env's span, which connect tasks run in (their connections' log lines name the env).
    pub(crate) span: tracing::Span,
    /// The env's dispatcher: replies rebind refs to it, and it tells whether the env stopped.
    pub(crate) dispatcher: Weak<Dispatcher>,
}

impl OutboxContext {
    /// The callback that completes an ask's slot with the reply from `client`.
    fn reply_handler(
        &self,
        slot: Arc<ReplySlot>,
        client: &TransportClient,
    ) -> impl FnOnce(Result<Bytes, TransportError>) + Send + 'static {
        let env = self.dispatcher.clone();
        let client = client.clone();
        move |result| {
            let outcome = match result {
                Ok(body) => match decode_reply(&body) {
                    Ok(Ok(typed)) => Ok(ReplyValue::Remote {
                        typed,
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
}

enum State {
    /// The connection is being opened; messages wait here, in order, with their total size.
    Connecting(VecDeque<OutboxMessage>, usize),
    /// Messages go straight to the connection.
    Connected(TransportClient),
    /// Failed or stopped: messages are refused (the poster opens a new outbox).
    Closed,
}

/// The messages to one remote address.
pub(crate) struct Outbox {
    address: RpcAddress,
    state: Mutex<State>,
    /// Signalled when the connection opens or fails (for senders waiting for room).
    settled: tokio::sync::Notify,
    /// Why connecting failed, for messages posted after (they name the real cause and peer).
    failure: std::sync::OnceLock<TransportError>,
    /// The peer's metric handles (registered once, here).
    metrics: PeerMetrics,
}

/// What `Outbox::post` did.
pub(crate) enum Posted {
    Done,
    /// The outbox's connection is gone: post to a new outbox.
    Stale(OutboxMessage),
    /// `rpc.outbox.maxBytes` would be exceeded: this many bytes wait already.
    Full(OutboxMessage, usize),
}

impl Outbox {
    /// A new outbox whose connection is opened by a task on the runtime of `cx`; `forget` is
    /// called with it if the connect fails (the network then drops it, so the next message to
    /// `address` tries again).
    pub(crate) fn open(
        address: RpcAddress,
        cx: &Arc<OutboxContext>,
        forget: impl FnOnce(&Arc<Outbox>) + Send + 'static,
    ) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox {
            address: address.clone(),
            state: Mutex::new(State::Connecting(VecDeque::new(), 0)),
            settled: tokio::sync::Notify::new(),
            failure: std::sync::OnceLock::new(),
            metrics: PeerMetrics::new(&address.to_string()),
        });
        let weak_cx: Weak<OutboxContext> = Arc::downgrade(cx);
        let me = outbox.clone();
        let span = cx.span.clone();
        let connect = async move {
            let Some(cx) = weak_cx.upgrade() else {
                return;
            };
            let connected = cx
                .factory
                .create_client(address.host().trim_matches(['[', ']']), address.port())
                .await;
            match connected {
                Ok(client) => {
                    me.metrics.connects.increment(1);
                    me.connected(client, &cx)
                }
                Err(e) => {
                    me.metrics.connect_failures.increment(1);
                    tracing::warn!(peer = %address, error = %e, "cannot connect");
                    let _ = me.failure.set(e.clone());
                    forget(&me);
                    me.close(&|| RpcError::Connection {
                        peer: address.to_string(),
                        source: e.clone(),
                    });
                }
            }
        };
        cx.runtime
            .spawn(tracing::Instrument::instrument(connect, span));
        outbox
    }

    pub(crate) fn address(&self) -> &RpcAddress {
        &self.address
    }

    /// Why connecting failed, if it did.
    pub(crate) fn failure(&self) -> Option<&TransportError> {
        self.failure.get()
    }

    /// The outbox's metric handles.
    pub(crate) fn metrics(&self) -> &PeerMetrics {
        &self.metrics
    }

    /// Bytes waiting to be written, and whether the connection is open.
    pub(crate) fn queued(&self) -> (usize, bool) {
        match &*self.lock() {
            State::Connecting(_, queued) => (*queued, false),
            State::Connected(c) => (c.queued_bytes(), c.is_active()),
            State::Closed => (0, false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues or sends a message, unless more than `rpc.outbox.maxBytes` would wait. Never
    /// blocks on the network.
    pub(crate) fn post(&self, message: OutboxMessage, cx: &OutboxContext) -> Posted {
        let mut state = self.lock();
        match &mut *state {
            State::Connecting(queue, queued) => {
                if !admits(*queued, message.len(), cx.max_bytes) {
                    self.metrics.queue_full.increment(1);
                    return Posted::Full(message, *queued);
                }
                *queued += message.len();
                queue.push_back(message);
                self.metrics.sent.increment(1);
                self.metrics.queued_bytes.set(*queued as f64);
                self.metrics.queued_messages.set(queue.len() as f64);
                Posted::Done
            }
            State::Connected(client) if client.is_active() => {
                let queued = client.queued_bytes();
                if !admits(queued, message.len(), cx.max_bytes) {
                    self.metrics.queue_full.increment(1);
                    return Posted::Full(message, queued);
                }
                self.metrics.sent.increment(1);
                self.metrics
                    .queued_bytes
                    .set((queued + message.len()) as f64);
                let client = client.clone();
                // Sent after the lock is released: the connection's own queue keeps the order
                // (a post that found the outbox connected came after `connected` had sent
                // everything queued before), and a write through the flush hook, a system call,
                // does not hold up the other threads posting to this peer.
                drop(state);
                dispatch(&client, message, cx);
                Posted::Done
            }
            State::Connected(_) => Posted::Stale(message),
            State::Closed => Posted::Stale(message),
        }
    }

    fn connected(&self, client: TransportClient, cx: &OutboxContext) {
        let mut state = self.lock();
        let queued = match std::mem::replace(&mut *state, State::Connected(client.clone())) {
            State::Connecting(q, _) => q,
            other => {
                // Stopped while connecting.
                *state = other;
                drop(state);
                client.close();
                return;
            }
        };
        for message in queued {
            dispatch(&client, message, cx);
        }
        self.metrics.queued_messages.set(0.0);
        drop(state);
        self.settled.notify_waiters();
    }

    /// Waits until `need` more bytes fit (or the outbox is closed or replaced); fails with the
    /// failure of its connection if that ends while waiting.
    pub(crate) async fn wait_for_room(
        &self,
        need: usize,
        max: usize,
    ) -> Result<(), TransportError> {
        loop {
            let settled = self.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            let client = match &*self.lock() {
                State::Connecting(_, queued) if !admits(*queued, need, max) => None,
                State::Connected(c) if c.is_active() => Some(c.clone()),
                _ => return Ok(()),
            };
            match client {
                Some(c) => return c.wait_queued_at_most(max.saturating_sub(need)).await,
                None => settled.await,
            }
        }
    }

    /// Whether this outbox's connection is `client`.
    pub(crate) fn uses(&self, client: &TransportClient) -> bool {
        matches!(&*self.lock(), State::Connected(c) if c == client)
    }

    /// Fails every queued message with the error `error` makes and refuses later ones.
    pub(crate) fn close(&self, error: &dyn Fn() -> RpcError) {
        let text = error().to_string();
        let queued = match std::mem::replace(&mut *self.lock(), State::Closed) {
            State::Connecting(q, _) => q,
            _ => VecDeque::new(),
        };
        self.settled.notify_waiters();
        let mut dropped_one_way = 0;
        for message in queued {
            match message {
                OutboxMessage::Rpc(_, slot) => {
                    slot.complete(Err(error()));
                }
                OutboxMessage::OneWay(_) => dropped_one_way += 1,
            }
        }
        if dropped_one_way > 0 {
            tracing::warn!(peer = %self.address, dropped = dropped_one_way, error = %text, "one-way messages not delivered");
        }
    }
}

/// Hands one message to a connection.
pub(crate) fn dispatch(client: &TransportClient, message: OutboxMessage, cx: &OutboxContext) {
    match message {
        OutboxMessage::OneWay(body) => {
            if let Err(e) = client.send(body) {
                tracing::warn!(peer = %client.remote_addr(), error = %e, "one-way message not delivered");
            }
        }
        OutboxMessage::Rpc(body, slot) => {
            if slot.is_complete() {
                // Aborted or timed out before it could be sent.
                return;
            }
            let on_reply = cx.reply_handler(slot.clone(), client);
            // The request is written from this thread when the connection's task is idle,
            // instead of waking that task (a thread hand-off) to write it: always for an ask
            // from a plain thread, which will most likely block for the reply; from a task only
            // while the connection's asks go one at a time (a lone caller waiting for each
            // reply), so that asks in flight together still leave in one write.
            let when = if tokio::runtime::Handle::try_current().is_err() {
                WriteNow::Always
            } else {
                WriteNow::WhenAlone
            };
            let id = client.send_rpc_with_callback_now(body, on_reply, when);
            slot.set_cancel(CancelHook::Request(client.clone(), id));
        }
    }
}
